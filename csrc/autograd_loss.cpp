// Autograd kernels of the losses: CrossEntropy, NLLLoss, MSELoss (the pattern: csrc/autograd.h;
// the math: csrc/ops.cpp). needs_input_grad(i) counts the defined tensor arguments only.
#include <ATen/ATen.h>

#include "autograd.h"

namespace torchmodules {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

TM_OP(add_forward_op, "add_forward", Tensor(const Tensor&, const Tensor&))

// ---- CrossEntropy ------------------------------------------------------------------------------
// lse and total_weight are non-differentiable outputs: the backward op reads lse as a cached
// function of the input, so the double backward op's d/dx is the total one. Weight is constant.

TM_OP(ce_forward_op, "cross_entropy_forward",
      std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t, double))
TM_OP(ce_backward_op, "cross_entropy_backward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                                 const Tensor&, int64_t, int64_t, double, bool))
TM_OP(ce_double_backward_op, "cross_entropy_double_backward",
      std::tuple<Tensor, Tensor, Tensor>(const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                                         const Tensor&, const OptTensor&, const Tensor&, const Tensor&, int64_t,
                                         int64_t, double))

void save_ce_params(AutogradContext* ctx, const Tensor& t, int64_t reduction, int64_t ignore_index, double smoothing) {
  ctx->saved_data["reduction"] = reduction;
  ctx->saved_data["ignore_index"] = ignore_index;
  ctx->saved_data["smoothing"] = smoothing;
  ctx->saved_data["prob"] = t.is_floating_point();
}

// dx = G (U p - u),  dq = -(1-eps) G w (x - lse) (probability targets only).
struct CrossEntropyForward : Function<CrossEntropyForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& t, const OptTensor& w,
                        int64_t reduction, int64_t ignore_index, double smoothing) {
    auto [loss, lse, tw] = below(ce_forward_op(), x, t, w, reduction, ignore_index, smoothing);
    ctx->set_materialize_grads(false);  // an undefined gradient stays so (no zeros launched)
    save_ce_params(ctx, t, reduction, ignore_index, smoothing);
    ctx->save_for_backward({x, t, w.value_or(Tensor()), lse, tw});
    side_outputs() = {lse, tw};
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool need_x = ctx->needs_input_grad(0);
    const bool tgrad = ctx->saved_data["prob"].toBool() && ctx->needs_input_grad(1);
    if ((!need_x && !tgrad) || !grads[0].defined()) return variable_list(6);
    const auto s = ctx->get_saved_variables();
    auto [dx, dq] = ce_backward_op().call(grads[0], s[0], s[1], opt(s[2]), s[3], s[4],
                                          ctx->saved_data["reduction"].toInt(),
                                          ctx->saved_data["ignore_index"].toInt(),
                                          ctx->saved_data["smoothing"].toDouble(), tgrad);
    return {need_x ? dx : Tensor(), tgrad ? dq : Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// dx = G (U p - u) (and dq): the double backward op gives d/dg, d/dx (through lse too), d/dq.
struct CrossEntropyBackward : Function<CrossEntropyBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& g, const Tensor& x, const Tensor& t,
                               const OptTensor& w, const Tensor& lse, const Tensor& tw, int64_t reduction,
                               int64_t ignore_index, double smoothing, bool target_grad) {
    save_ce_params(ctx, t, reduction, ignore_index, smoothing);
    ctx->saved_data["target_grad"] = target_grad;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({g, x, t, w.value_or(Tensor()), lse, tw});
    auto [dx, dq] = below(ce_backward_op(), g, x, t, w, lse, tw, reduction, ignore_index, smoothing, target_grad);
    return {dx, dq};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor gg = grads[0], hh = ctx->saved_data["target_grad"].toBool() ? grads[1] : Tensor();
    const bool prob = ctx->saved_data["prob"].toBool();
    const bool need_g = ctx->needs_input_grad(0), need_x = ctx->needs_input_grad(1),
               need_q = prob && ctx->needs_input_grad(2);
    if ((!gg.defined() && !hh.defined()) || !(need_g || need_x || need_q)) return variable_list(10);
    const auto s = ctx->get_saved_variables();
    auto [d_g, d_x, d_q] = ce_double_backward_op().call(
        opt(gg), opt(hh), s[0], s[1], s[2], opt(s[3]), s[4], s[5], ctx->saved_data["reduction"].toInt(),
        ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["smoothing"].toDouble());
    variable_list out(10);
    if (need_g) out[0] = d_g;
    if (need_x) out[1] = d_x;
    if (need_q) out[2] = d_q;
    return out;
  }
};

// Third order, composed from torch ops in the class-last layout. With the double backward's outputs
//   Dg = sc (U S - <gg,u> - k <hh, w logp>),  Dx = G U p (gg - S) - k G (hh w - p Hw),  Dq = k G w (S - gg)
// (k = 1-eps, S = <gg,p>, Hw = <hh,w>) and upstream a, b, e, with Pb = <b,p>, Bg = <b, p (gg - S)>, Ew = <e,w>:
//   d/dgg = a sc (U p - u) + G U p (b - Pb) + k G (Ew p - e w),   d/dhh = -k w (a sc logp + G (b - Pb)),
//   d/dg  = sc (U Bg - k (<b hh, w> - Pb Hw) + k <e, w (S - gg)>),
//   d/dx  = a sc (U p (gg - S) - k (hh w - p Hw)) + G U (p b (gg - S) - p Bg - Pb p (gg - S))
//           + k G Hw p (b - Pb) + k G Ew p (gg - S),
//   d/dq  = k w (a sc (S - gg) + G Bg).
struct CrossEntropyDoubleBackward : Function<CrossEntropyDoubleBackward> {
  static variable_list forward(AutogradContext* ctx, const OptTensor& gg, const OptTensor& hh, const Tensor& g,
                               const Tensor& x, const Tensor& t, const OptTensor& w, const Tensor& lse,
                               const Tensor& tw, int64_t reduction, int64_t ignore_index, double smoothing) {
    save_ce_params(ctx, t, reduction, ignore_index, smoothing);
    ctx->set_materialize_grads(false);
    const Tensor ggt = gg.value_or(Tensor()), hht = hh.value_or(Tensor());
    ctx->saved_data["first_edge"] = int64_t(ggt.defined()) + int64_t(hht.defined());  // edge of g
    ctx->save_for_backward({ggt, hht, g, x, t, w.value_or(Tensor()), tw});
    auto [d_g, d_x, d_q] =
        below(ce_double_backward_op(), gg, hh, g, x, t, w, lse, tw, reduction, ignore_index, smoothing);
    return {d_g, d_x, d_q};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &gg = s[0], &hh = s[1], &g = s[2], &x = s[3], &t = s[4], &w = s[5], &tw = s[6];
    const Tensor &a = grads[0], &b = grads[1], &e = grads[2];
    const int64_t red = ctx->saved_data["reduction"].toInt(), ignore_index = ctx->saved_data["ignore_index"].toInt();
    const double smoothing = ctx->saved_data["smoothing"].toDouble();
    const bool prob = ctx->saved_data["prob"].toBool();
    const int64_t e0 = ctx->saved_data["first_edge"].toInt();
    const bool need_gg = gg.defined() && ctx->needs_input_grad(0);
    const bool need_hh = prob && hh.defined() && ctx->needs_input_grad(gg.defined() ? 1 : 0);
    const bool need_g = ctx->needs_input_grad(e0), need_x = ctx->needs_input_grad(e0 + 1),
               need_q = prob && ctx->needs_input_grad(e0 + 2);
    variable_list out(11);
    if (!(need_gg || need_hh || need_g || need_x || need_q)) return out;

    const bool unbatched = x.dim() == 1;
    auto cl = [&](const Tensor& v) { return unbatched ? v.unsqueeze(0) : v.movedim(1, -1); };  // class dim last
    auto back = [&](const Tensor& v) { return unbatched ? v.squeeze(0) : v.movedim(-1, 1); };
    const Tensor X = cl(x);
    const c10::SymInt C = X.sym_size(-1);
    const Tensor p = at::softmax(X, -1), logp = at::log_softmax(X, -1);
    const Tensor W = w.defined() ? w : at::ones_symint(c10::SymIntArrayRef(C), x.options());
    const double k = 1.0 - smoothing;
    const at::Scalar epsc(smoothing / C);
    Tensor u;
    if (prob) {
      u = W * (k * cl(t) + epsc);
    } else {
      const Tensor T = unbatched ? t.unsqueeze(0) : t;
      const Tensor kept = T.ne(ignore_index);
      const Tensor Tc = at::where(kept, T, at::zeros_like(T));
      const Tensor onehot = at::zeros_like(X).scatter(-1, Tc.unsqueeze(-1), 1);
      u = (k * (onehot * W) + W * epsc) * kept.unsqueeze(-1).to(x.scalar_type());
    }
    const Tensor U = u.sum(-1, true);
    const Tensor sc = red == 1 ? tw.select(0, 0).reciprocal() : Tensor();
    auto scaled = [&](const Tensor& v) { return sc.defined() ? v * sc : v; };
    const c10::SymIntArrayRef rows = X.sym_sizes().slice(0, X.dim() - 1);
    auto per_row = [&](Tensor v) {  // a row tensor (or 0-d) as [..., 1]
      if (unbatched && red == 0) v = v.unsqueeze(0);
      return v.expand_symint(rows).unsqueeze(-1);
    };

    const Tensor G = scaled(per_row(g));
    const Tensor zero = at::zeros_like(X);
    const Tensor GG = gg.defined() ? cl(gg) : zero, HH = hh.defined() ? cl(hh) : zero;
    const Tensor As = scaled(a.defined() ? per_row(a) : at::zeros_like(U));  // a sc
    const Tensor B = b.defined() ? cl(b) : zero, E = e.defined() && prob ? cl(e) : zero;
    const Tensor S = (GG * p).sum(-1, true), Pb = (B * p).sum(-1, true), GS = GG - S;
    const Tensor Bg = (B * p * GS).sum(-1, true), Ew = (E * W).sum(-1, true), Hw = (HH * W).sum(-1, true);
    if (need_gg) out[0] = back(As * (U * p - u) + G * U * p * (B - Pb) + k * G * (Ew * p - E * W));
    if (need_hh) out[1] = back(-k * W * (As * logp + G * (B - Pb)));
    if (need_g) {
      Tensor d_g = scaled(U * Bg - k * ((B * HH * W).sum(-1, true) - Pb * Hw) + k * (E * W * (S - GG)).sum(-1, true))
                       .squeeze(-1);
      out[2] = red != 0 ? d_g.sum() : (unbatched ? d_g.squeeze(0) : d_g);
    }
    if (need_x)
      out[3] = back(As * (U * p * GS - k * (HH * W - p * Hw)) + G * U * (p * B * GS - p * Bg - Pb * p * GS) +
                    k * G * Hw * p * (B - Pb) + k * G * Ew * p * GS);
    if (need_q) out[4] = back(k * W * (As * (S - GG) + G * Bg));
    return out;
  }
};

// ---- NLLLoss ---------------------------------------------------------------------------------

TM_OP(nll_forward_op, "nll_loss_forward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t))
TM_OP(nll_backward_op, "nll_loss_backward",
      Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, c10::SymIntArrayRef, int64_t, int64_t))

// dx[n, c, d] = -w[c] g_i [c == t_i]; saves W, not x. W is non-differentiable (free of x).
struct NllLossForward : Function<NllLossForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& t, const OptTensor& w,
                        int64_t reduction, int64_t ignore_index) {
    auto [y, W] = below(nll_forward_op(), x, t, w, reduction, ignore_index);
    ctx->set_materialize_grads(false);  // an undefined gradient stays so (no zeros launched)
    ctx->saved_data["input_size"] = x.sym_sizes();
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->save_for_backward({t, w.value_or(Tensor()), W});
    side_outputs() = {W};
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);
    const auto s = ctx->get_saved_variables();
    const std::vector<c10::SymInt> size = ctx->saved_data["input_size"].toSymIntVector();
    return {nll_backward_op().call(grads[0], s[0], opt(s[1]), s[2], size, ctx->saved_data["reduction"].toInt(),
                                   ctx->saved_data["ignore_index"].toInt()),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// dx is linear in dy and free of x: d/d(dy) <gg, dx> is the forward applied to gg (for mean, the
// forward's W, recomputed from target and weight, equals the W the backward was given).
struct NllLossBackward : Function<NllLossBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& t, const OptTensor& w,
                               const Tensor& W, c10::SymIntArrayRef input_size, int64_t reduction,
                               int64_t ignore_index) {
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->save_for_backward({t, w.value_or(Tensor())});
    return below(nll_backward_op(), dy, t, w, W, input_size, reduction, ignore_index);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!ctx->needs_input_grad(0)) return variable_list(7);
    const auto s = ctx->get_saved_variables();
    auto [d_dy, _] = nll_forward_op().call(grads[0], s[0], opt(s[1]), ctx->saved_data["reduction"].toInt(),
                                          ctx->saved_data["ignore_index"].toInt());
    return {d_dy, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ---- MSELoss ---------------------------------------------------------------------------------

TM_OP(mse_forward_op, "mse_loss_forward", Tensor(const Tensor&, const Tensor&, int64_t))
TM_OP(mse_backward_op, "mse_loss_backward", Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t))
TM_OP(mse_double_backward_op, "mse_loss_double_backward",
      std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t))

// mse_loss_backward(dy, a, b) summed down to a's shape. A half-type a that was broadcast gets
// its elements computed and summed in float, rounded once: rounding each element before the
// sum (torch's way) adds up to half an ulp per element summed.
Tensor mse_grad_down(const Tensor& dy, const Tensor& a, const Tensor& b, int64_t red) {
  const bool widen = at::isReducedFloatingType(a.scalar_type()) &&
                     !c10::SymIntArrayRef(at::infer_size_symdimvector(a.sym_sizes(), b.sym_sizes())).equals(a.sym_sizes());
  const auto f = [widen](const Tensor& v) { return widen ? v.to(at::kFloat) : v; };
  const Tensor g = sum_down(mse_backward_op().call(f(dy), f(a), f(b), red), a.sym_sizes());
  return widen ? g.to(a.scalar_type()) : g;
}

// dx = c (x - t) dy,  dt = -dx = mse_loss_backward(dy, t, x), each summed down to its input's shape.
struct MseLossForward : Function<MseLossForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& t, int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({x, t});
    return below(mse_forward_op(), x, t, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &t = s[1], &dy = grads[0];
    const int64_t red = ctx->saved_data["reduction"].toInt();
    const bool need_x = ctx->needs_input_grad(0), need_t = ctx->needs_input_grad(1);
    return {need_x ? mse_grad_down(dy, x, t, red) : Tensor(), need_t ? mse_grad_down(dy, t, x, red) : Tensor(),
            Tensor()};
  }
};

// dx = c (x - t) dy:  d/d(dy) = c (x - t) gg [summed],  d/dx = c dy gg,  d/dt = -c dy gg.
struct MseLossBackward : Function<MseLossBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& x, const Tensor& t,
                               int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({dy, x, t});
    return below(mse_backward_op(), dy, x, t, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool need_dy = ctx->needs_input_grad(0), need_x = ctx->needs_input_grad(1),
               need_t = ctx->needs_input_grad(2);
    if (!(need_dy || need_x || need_t)) return variable_list(4);
    const auto s = ctx->get_saved_variables();
    const Tensor &dy = s[0], &x = s[1], &t = s[2];
    auto [d_dy, d_x, d_t] =
        mse_double_backward_op().call(grads[0], dy, x, t, ctx->saved_data["reduction"].toInt());
    return {need_dy ? d_dy : Tensor(), need_x ? sum_down(d_x, x.sym_sizes()) : Tensor(),
            need_t ? sum_down(d_t, t.sym_sizes()) : Tensor(), Tensor()};
  }
};

// Third order, from our own ops. For (A, B, C) = (c R[u (x - t)], c dy u, -c dy u), u = gg, and
// upstream (p, q, r):  d/du = c p (x - t) + c dy (q - r) = bwd(p, x, t) + bwd(dy, q, r),
//   d/d(dy) = c R[u (q - r)] = D(u, ., q, r)[0],  d/dx = c p u = D(u, p, x, t)[1],  d/dt = D(u, p, x, t)[2].
struct MseLossDoubleBackward : Function<MseLossDoubleBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& gg, const Tensor& dy, const Tensor& x,
                               const Tensor& t, int64_t reduction) {
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({gg, dy, x, t});
    auto [d_dy, d_x, d_t] = below(mse_double_backward_op(), gg, dy, x, t, reduction);
    return {d_dy, d_x, d_t};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &u = s[0], &dy = s[1], &x = s[2], &t = s[3], &p = grads[0], &q = grads[1], &r = grads[2];
    const int64_t red = ctx->saved_data["reduction"].toInt();
    variable_list out(5);
    if (ctx->needs_input_grad(0))
      out[0] = add_forward_op().call(mse_backward_op().call(p, x, t, red), mse_backward_op().call(dy, q, r, red));
    if (ctx->needs_input_grad(1)) out[1] = std::get<0>(mse_double_backward_op().call(u, dy, q, r, red));
    const bool need_x = ctx->needs_input_grad(2), need_t = ctx->needs_input_grad(3);
    if (need_x || need_t) {
      auto [_, d_x, d_t] = mse_double_backward_op().call(u, p, x, t, red);
      if (need_x) out[2] = sum_down(d_x, x.sym_sizes());
      if (need_t) out[3] = sum_down(d_t, t.sym_sizes());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, Autograd, m) {
  TM_AUTOGRAD(m, "cross_entropy_forward", CrossEntropyForward, ce_forward_op);
  TM_AUTOGRAD(m, "cross_entropy_backward", CrossEntropyBackward, ce_backward_op);
  TM_AUTOGRAD(m, "cross_entropy_double_backward", CrossEntropyDoubleBackward, ce_double_backward_op);
  TM_AUTOGRAD(m, "nll_loss_forward", NllLossForward, nll_forward_op);
  TM_AUTOGRAD(m, "nll_loss_backward", NllLossBackward, nll_backward_op);
  TM_AUTOGRAD(m, "mse_loss_forward", MseLossForward, mse_forward_op);
  TM_AUTOGRAD(m, "mse_loss_backward", MseLossBackward, mse_backward_op);
  TM_AUTOGRAD(m, "mse_loss_double_backward", MseLossDoubleBackward, mse_double_backward_op);
}

}  // namespace torchmodules
