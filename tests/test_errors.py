"""Bad input raises a clear Python exception that names the op and the offending shapes,
dtypes or devices, of torch's exception type (users catch torch's): that of torch's own call
where there is one (so we reject only what torch rejects), else a RuntimeError as torch's op
checks (a NotImplementedError, a RuntimeError too, for a dtype our kernels lack)."""
import pytest
import torch

import torchmodules.functional as TF

F = torch.nn.functional
r = torch.randn
i64 = dict(dtype=torch.int64)

RE, NIE = RuntimeError, NotImplementedError
# (id, ours, torch's twin or None, exception type, words the message must contain). Exception type
# None: the type torch's twin raises (the same call); else that type (the twin, if any, a near
# equivalent that torch rejects too).
BAD = [
    ("linear_shape", lambda: TF.linear(r(3, 4), r(5, 6)), lambda: F.linear(r(3, 4), r(5, 6)),
     None, ["linear", "[3, 4]", "[5, 6]"]),
    ("linear_dtype", lambda: TF.linear(r(3, 4), r(5, 4).double()), lambda: F.linear(r(3, 4), r(5, 4).double()),
     None, ["linear", "Float", "Double"]),
    ("linear_bias_shape", lambda: TF.linear(r(3, 4), r(5, 4), r(4)), lambda: F.linear(r(3, 4), r(5, 4), r(4)),
     None, ["linear", "bias", "[4]"]),
    ("linear_bias_1_dtype", lambda: TF.linear(r(3, 4), r(5, 4), r(1).double()),
     lambda: F.linear(r(3, 4), r(5, 4), r(1).double()), None, ["linear", "bias", "[1]", "float64"]),
    ("linear_int", lambda: TF.linear(torch.ones(3, 4, **i64), torch.ones(5, 4, **i64)), None,
     NIE, ["linear", "Long", "[3, 4]"]),
    ("linear_weight_1d_shape", lambda: TF.linear(r(3, 4), r(5)), lambda: F.linear(r(3, 4), r(5)),
     None, ["linear", "weight", "[3, 4]", "[5]"]),
    ("linear_weight_1d_bias", lambda: TF.linear(r(3, 4), r(4), r(())), lambda: F.linear(r(3, 4), r(4), r(())),
     None, ["linear", "weight", "[4]", "[3, 4]"]),
    ("linear_weight_3d", lambda: TF.linear(r(3, 4), r(2, 5, 4)), lambda: F.linear(r(3, 4), r(2, 5, 4)),
     None, ["linear", "weight", "[2, 5, 4]"]),
    ("linear_input_0d", lambda: TF.linear(r(()), r(4, 1)), lambda: F.linear(r(()), r(4, 1)),
     None, ["linear", "[]"]),
    # linear_relu: linear's checks, naming linear_relu; torch's twin relu(linear(...)) rejects the same
    ("linear_relu_shape", lambda: TF.linear_relu(r(3, 4), r(5, 6)), lambda: F.relu(F.linear(r(3, 4), r(5, 6))),
     None, ["linear_relu", "[3, 4]", "[5, 6]"]),
    ("linear_relu_dtype", lambda: TF.linear_relu(r(3, 4), r(5, 4).double()),
     lambda: F.relu(F.linear(r(3, 4), r(5, 4).double())), None, ["linear_relu", "Float", "Double"]),
    ("linear_relu_bias_shape", lambda: TF.linear_relu(r(3, 4), r(5, 4), r(4)),
     lambda: F.relu(F.linear(r(3, 4), r(5, 4), r(4))), None, ["linear", "bias", "[4]"]),
    ("linear_relu_bias_dtype", lambda: TF.linear_relu(r(3, 4), r(5, 4), r(5).double()),
     lambda: F.relu(F.linear(r(3, 4), r(5, 4), r(5).double())), None, ["linear_relu", "bias", "Double"]),
    ("linear_relu_int", lambda: TF.linear_relu(torch.ones(3, 4, **i64), torch.ones(5, 4, **i64)), None,
     NIE, ["linear_relu", "Long", "[3, 4]"]),
    ("linear_relu_weight_3d", lambda: TF.linear_relu(r(3, 4), r(2, 5, 4)),
     lambda: F.relu(F.linear(r(3, 4), r(2, 5, 4))), None, ["linear", "weight", "[2, 5, 4]"]),
    ("linear_relu_input_0d", lambda: torch.ops.torchmodules.linear_relu_forward(r(()), r(4, 1), None),
     lambda: F.relu(F.linear(r(()), r(4, 1))), None, ["linear_relu", "[]"]),
    ("relu_int", lambda: TF.relu(torch.ones(3, dtype=torch.int32)), None, NIE, ["relu", "Int", "[3]"]),
    ("relu_complex", lambda: TF.relu(torch.ones(3, dtype=torch.complex64)),
     lambda: torch.relu(torch.ones(3, dtype=torch.complex64)), None, ["relu", "Complex"]),
    ("add_shape", lambda: TF.add(r(3, 4), r(5)), lambda: torch.add(r(3, 4), r(5)),
     None, ["add", "[3, 4]", "[5]"]),
    ("maximum_shape", lambda: TF.maximum(r(3, 4), r(5)), lambda: torch.maximum(r(3, 4), r(5)),
     None, ["maximum", "[3, 4]", "[5]"]),
    ("maximum_int", lambda: TF.maximum(torch.ones(3, **i64), torch.ones(3, **i64)), None,
     NIE, ["maximum", "Long"]),
    ("amax_bad_dim", lambda: TF.amax(r(3, 4), 2), lambda: torch.amax(r(3, 4), 2), None, ["amax", "dim 2"]),
    ("amax_repeated_dim", lambda: TF.amax(r(3, 4), (1, 1)), lambda: torch.amax(r(3, 4), (1, 1)),
     None, ["amax", "[1, 1]"]),
    ("amax_empty", lambda: TF.amax(r(0, 4), 0), lambda: torch.amax(r(0, 4), 0), None, ["amax", "[0, 4]"]),
    ("amax_all_of_empty", lambda: TF.amax(r(3, 0)), lambda: torch.amax(r(3, 0)), None, ["amax", "[3, 0]"]),
    ("amax_int", lambda: TF.amax(torch.ones(3, **i64), 0), None, NIE, ["amax", "Long"]),
    ("log_softmax_bad_dim", lambda: TF.log_softmax(r(3, 4), 5), lambda: torch.log_softmax(r(3, 4), 5),
     None, ["log_softmax", "dim 5"]),
    ("log_softmax_int", lambda: TF.log_softmax(torch.ones(3, 4, **i64), 1), lambda: torch.log_softmax(
        torch.ones(3, 4, **i64), 1), None, ["log_softmax", "Long"]),
    ("duplicate_n0", lambda: TF.duplicate(r(3), 0), None, RE, ["duplicate", "n", "0"]),
    ("duplicate_negative", lambda: TF.duplicate(r(3), -1), None, RE, ["duplicate", "-1"]),
    ("relu_backward_bad_mask", lambda: torch.ops.torchmodules.relu_backward(r(40), torch.zeros(3, dtype=torch.uint8)),
     None, RE, ["relu_backward", "mask", "[40]"]),
    ("maximum_backward_bad_which", lambda: torch.ops.torchmodules.maximum_backward(
        r(4), torch.zeros(4, dtype=torch.uint8), 2), None, RE, ["maximum_backward", "which"]),
    ("cross_entropy_target_too_big", lambda: TF.cross_entropy(r(3, 4), torch.tensor([0, 7, 1])),
     lambda: F.cross_entropy(r(3, 4), torch.tensor([0, 7, 1])), None, ["cross_entropy", "target 7", "4 classes"]),
    ("cross_entropy_target_negative", lambda: TF.cross_entropy(r(3, 4), torch.tensor([0, -1, 1]), reduction="none"),
     lambda: F.cross_entropy(r(3, 4), torch.tensor([0, -1, 1]), reduction="none"), None,
     ["cross_entropy", "target -1"]),
    ("cross_entropy_target_too_big_nd_smooth", lambda: TF.cross_entropy(
        r(2, 3, 5), torch.tensor([[0, 1, 2, 3, 1], [0, 0, 0, 0, 0]]), label_smoothing=0.1),
     lambda: F.cross_entropy(r(2, 3, 5), torch.tensor([[0, 1, 2, 3, 1], [0, 0, 0, 0, 0]]), label_smoothing=0.1),
     None, ["cross_entropy", "target 3", "3 classes"]),
    ("cross_entropy_target_shape", lambda: TF.cross_entropy(r(3, 4), torch.zeros(4, **i64)),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(4, **i64)), None, ["cross_entropy", "[4]", "[3, 4]"]),
    ("cross_entropy_target_spatial", lambda: TF.cross_entropy(r(2, 4, 3), torch.zeros(2, 4, **i64)),
     lambda: F.cross_entropy(r(2, 4, 3), torch.zeros(2, 4, **i64)), None,
     ["cross_entropy", "[2, 4]", "[2, 4, 3]", "[2, 3]"]),
    ("cross_entropy_float_class_target", lambda: TF.cross_entropy(r(3, 4), r(3)),
     lambda: F.cross_entropy(r(3, 4), r(3)), None, ["cross_entropy", "int64", "Float"]),
    ("cross_entropy_int_prob_target", lambda: TF.cross_entropy(r(3, 4), torch.zeros(3, 4, **i64)),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, 4, **i64)), None, ["cross_entropy", "floating", "Long"]),
    ("cross_entropy_uint8_target_nd", lambda: TF.cross_entropy(r(3, 4, 2), torch.zeros(3, 2, dtype=torch.uint8)),
     lambda: F.cross_entropy(r(3, 4, 2), torch.zeros(3, 2, dtype=torch.uint8)), None,
     ["cross_entropy", "Byte", "[3, 2]", "uint8"]),
    ("cross_entropy_weight_shape", lambda: TF.cross_entropy(r(3, 4), torch.zeros(3, **i64), r(5)),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, **i64), r(5)), None, ["cross_entropy", "weight", "[5]"]),
    ("cross_entropy_weight_dtype", lambda: TF.cross_entropy(r(3, 4), torch.zeros(3, **i64), r(4).double()),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, **i64), r(4).double()), None,
     ["cross_entropy", "Float", "Double"]),
    ("cross_entropy_weight_requires_grad", lambda: TF.cross_entropy(
        r(3, 4), torch.zeros(3, **i64), r(4, requires_grad=True)),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, **i64), r(4, requires_grad=True)), None,
     ["cross_entropy", "weight"]),
    ("cross_entropy_bad_reduction", lambda: TF.cross_entropy(r(3, 4), torch.zeros(3, **i64), reduction="avg"),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, **i64), reduction="avg"), None, ["cross_entropy", "avg"]),
    ("cross_entropy_label_smoothing", lambda: TF.cross_entropy(r(3, 4), torch.zeros(3, **i64), label_smoothing=1.5),
     lambda: F.cross_entropy(r(3, 4), torch.zeros(3, **i64), label_smoothing=1.5), None,
     ["cross_entropy", "label_smoothing", "1.5"]),
    ("cross_entropy_prob_ignore_index", lambda: TF.cross_entropy(r(3, 4), r(3, 4), ignore_index=1),
     lambda: F.cross_entropy(r(3, 4), r(3, 4), ignore_index=1), None, ["cross_entropy", "ignore_index"]),
    ("cross_entropy_input_0d", lambda: TF.cross_entropy(r(()), torch.zeros((), **i64)),
     lambda: F.cross_entropy(r(()), torch.zeros((), **i64)), None, ["cross_entropy", "[]"]),
    ("cross_entropy_input_0d_prob", lambda: TF.cross_entropy(r(()), r(())),
     lambda: F.cross_entropy(r(()), r(())), None, ["cross_entropy", "[]", "class dim"]),
    ("cross_entropy_int_input", lambda: TF.cross_entropy(torch.ones(3, 4, **i64), torch.zeros(3, **i64)),
     lambda: F.cross_entropy(torch.ones(3, 4, **i64), torch.zeros(3, **i64)), None, ["cross_entropy", "Long"]),
    ("cross_entropy_no_classes", lambda: TF.cross_entropy(r(3, 0), torch.zeros(3, **i64)),
     lambda: F.cross_entropy(r(3, 0), torch.zeros(3, **i64)), None, ["cross_entropy", "target 0", "0 classes"]),
    ("cross_entropy_backward_lse_dtype", lambda: torch.ops.torchmodules.cross_entropy_backward(
        r(()), r(3, 4), torch.zeros(3, **i64), None, r(3).double(), r(2), 1, -100, 0.0, False), None,
     RE, ["cross_entropy_backward", "lse", "Double"]),
    ("nll_loss_target_int32", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2], dtype=torch.int32)),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2], dtype=torch.int32)), None, ["nll_loss", "target", "Int"]),
    ("nll_loss_target_float", lambda: TF.nll_loss(r(3, 4), torch.tensor([0.0, 1.0, 2.0])),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0.0, 1.0, 2.0])), None, ["nll_loss", "target", "Float"]),
    ("nll_loss_target_uint8_nd", lambda: TF.nll_loss(r(3, 4, 2), torch.zeros(3, 2, dtype=torch.uint8)),
     lambda: F.nll_loss(r(3, 4, 2), torch.zeros(3, 2, dtype=torch.uint8)), None,
     ["nll_loss", "target", "Byte", "[3, 4, 2]"]),
    ("nll_loss_batch_mismatch", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1])),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1])), None, ["nll_loss", "[2]", "[3, 4]"]),
    ("nll_loss_target_2d", lambda: TF.nll_loss(r(3, 4), torch.zeros(3, 2, **i64)),
     lambda: F.nll_loss(r(3, 4), torch.zeros(3, 2, **i64)), None, ["nll_loss", "[3, 2]", "[3, 4]", "[3]"]),
    ("nll_loss_spatial_mismatch", lambda: TF.nll_loss(r(2, 4, 3), torch.zeros(2, 4, **i64)),
     lambda: F.nll_loss(r(2, 4, 3), torch.zeros(2, 4, **i64)), None, ["nll_loss", "[2, 4]", "[2, 4, 3]", "[2, 3]"]),
    ("nll_loss_unbatched_target", lambda: TF.nll_loss(r(4), torch.tensor([1, 2])),
     lambda: F.nll_loss(r(4), torch.tensor([1, 2])), None, ["nll_loss", "[4]", "[2]"]),
    ("nll_loss_unbatched_target_2d", lambda: TF.nll_loss(r(4), torch.tensor([[1]])),
     lambda: F.nll_loss(r(4), torch.tensor([[1]])), None, ["nll_loss", "[4]", "[1, 1]"]),
    ("nll_loss_input_0d", lambda: TF.nll_loss(r(()), torch.tensor(0)), lambda: F.nll_loss(r(()), torch.tensor(0)),
     None, ["nll_loss", "[]"]),
    ("nll_loss_class_too_big", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 4, 1])),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 4, 1])), None, ["nll_loss", "target 4", "[0, 4)"]),
    ("nll_loss_class_negative", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, -1]), reduction="none"),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, -1]), reduction="none"), None, ["nll_loss", "target -1"]),
    ("nll_loss_class_4d", lambda: TF.nll_loss(r(2, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]], [[0, 0], [0, 0]]])),
     lambda: F.nll_loss(r(2, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]], [[0, 0], [0, 0]]])), None,
     ["nll_loss", "target 3", "[0, 3)"]),
    ("nll_loss_class_uint8", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 200, 1], dtype=torch.uint8)),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 200, 1], dtype=torch.uint8)), None, ["nll_loss", "target 200"]),
    ("nll_loss_weight_size", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(3)),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(3)), None, ["nll_loss", "weight", "[3]", "[4]"]),
    ("nll_loss_weight_2d", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(2, 2)),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(2, 2)), None, ["nll_loss", "weight", "[2, 2]"]),
    ("nll_loss_weight_dtype", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(4).double()),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(4).double()), None,
     ["nll_loss", "weight", "Float", "Double"]),
    ("nll_loss_weight_requires_grad", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(4).requires_grad_()),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), r(4).requires_grad_()), None,
     ["nll_loss", "weight", "requires_grad"]),
    ("nll_loss_int_input", lambda: TF.nll_loss(torch.ones(3, 4, **i64), torch.tensor([0, 1, 2])),
     lambda: F.nll_loss(torch.ones(3, 4, **i64), torch.tensor([0, 1, 2])), None, ["nll_loss", "Long"]),
    ("nll_loss_bad_reduction", lambda: TF.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), reduction="avg"),
     lambda: F.nll_loss(r(3, 4), torch.tensor([0, 1, 2]), reduction="avg"), None, ["nll_loss", "avg"]),
    ("nll_loss_backward_bad_class", lambda: torch.ops.torchmodules.nll_loss_backward(
        r(()), torch.tensor([0, 9, 1]), None, torch.tensor(3.0), [3, 4], 1, -100), None, IndexError,
     ["nll_loss_backward", "target 9"]),
    ("nll_loss_backward_total_weight", lambda: torch.ops.torchmodules.nll_loss_backward(
        r(()).half(), torch.tensor([0, 1, 1]), None, torch.tensor(3.0).half(), [3, 4], 1, -100), None, RE,
     ["nll_loss_backward", "total_weight", "Float", "Half"]),
    ("mse_loss_shape", lambda: TF.mse_loss(r(3), r(4)), lambda: F.mse_loss(r(3), r(4)),
     None, ["mse_loss", "[3]", "[4]"]),
    ("mse_loss_int", lambda: TF.mse_loss(torch.ones(3, **i64), torch.ones(3, **i64)),
     lambda: F.mse_loss(torch.ones(3, **i64), torch.ones(3, **i64)), None, ["mse_loss", "Long", "[3]"]),
    ("mse_loss_complex", lambda: TF.mse_loss(r(3), r(3, dtype=torch.complex64)),
     lambda: F.mse_loss(r(3), r(3, dtype=torch.complex64)), None, ["mse_loss", "ComplexFloat", "[3]"]),
    ("mse_loss_bad_reduction", lambda: TF.mse_loss(r(3), r(3), reduction="avg"),
     lambda: F.mse_loss(r(3), r(3), reduction="avg"), None, ["mse_loss", "avg"]),
    ("mse_loss_backward_grad_shape", lambda: torch.ops.torchmodules.mse_loss_backward(r(3), r(2, 3), r(2, 3), 1),
     None, RE, ["mse_loss_backward", "grad_y", "[3]"]),
    ("mse_loss_backward_dtypes", lambda: torch.ops.torchmodules.mse_loss_backward(r(()), r(3), r(3).double(), 1),
     None, RE, ["mse_loss_backward", "Float", "Double"]),
    # nearest_neighbor: torch's twins compute the same distances (cdist) or argmin (of an empty set)
    ("nearest_neighbor_features", lambda: TF.nearest_neighbor(r(3, 4), r(5, 6)), lambda: torch.cdist(r(3, 4), r(5, 6)),
     RE, ["nearest_neighbor", "[3, 4]", "[5, 6]"]),
    ("nearest_neighbor_features_batched", lambda: TF.nearest_neighbor(r(2, 3, 4), r(5, 3)),
     lambda: torch.cdist(r(2, 3, 4), r(5, 3)), RE, ["nearest_neighbor", "[2, 3, 4]", "[5, 3]"]),
    ("nearest_neighbor_weight_1d", lambda: TF.nearest_neighbor(r(3, 4), r(4)), lambda: torch.cdist(r(3, 4), r(4)),
     RE, ["nearest_neighbor", "weight", "2-D", "[4]"]),
    ("nearest_neighbor_weight_3d", lambda: TF.nearest_neighbor(r(3, 4), r(2, 5, 4)), None,
     RE, ["nearest_neighbor", "weight", "[2, 5, 4]"]),
    ("nearest_neighbor_input_0d", lambda: TF.nearest_neighbor(r(()), r(5, 1)), lambda: torch.cdist(r(()), r(5, 1)),
     RE, ["nearest_neighbor", "input", "[]"]),
    ("nearest_neighbor_no_prototypes", lambda: TF.nearest_neighbor(r(3, 4), r(0, 4)),
     lambda: ((r(3, 1, 4) - r(0, 4)) ** 2).sum(-1).argmin(-1), IndexError,
     ["nearest_neighbor", "[0, 4]", "prototypes"]),
    ("nearest_neighbor_dtype", lambda: TF.nearest_neighbor(r(3, 4), r(5, 4).double()),
     lambda: torch.cdist(r(3, 4), r(5, 4).double()), RE, ["nearest_neighbor", "Float", "Double"]),
    ("nearest_neighbor_int", lambda: TF.nearest_neighbor(torch.ones(3, 4, **i64), torch.ones(5, 4, **i64)),
     lambda: torch.cdist(torch.ones(3, 4, **i64), torch.ones(5, 4, **i64)), NIE,
     ["nearest_neighbor", "Long", "[3, 4]"]),
    ("nearest_neighbor_backward_input_index", lambda: torch.ops.torchmodules.nearest_neighbor_backward_input(
        r(3), r(3, 4), r(5, 4), torch.tensor([0, 5, 1])), None, IndexError,
     ["nearest_neighbor_backward_input", "index 5", "row 1", "5 prototypes"]),
    ("nearest_neighbor_backward_weight_index", lambda: torch.ops.torchmodules.nearest_neighbor_backward_weight(
        r(3), r(3, 4), r(5, 4), torch.tensor([0, 1, -1])), None, IndexError,
     ["nearest_neighbor_backward_weight", "index -1", "row 2"]),
    ("nearest_neighbor_backward_grad_shape", lambda: torch.ops.torchmodules.nearest_neighbor_backward_weight(
        r(4), r(3, 4), r(5, 4), torch.zeros(3, **i64)), None, RE,
     ["nearest_neighbor_backward_weight", "grad", "[4]", "[3]"]),
    ("nearest_neighbor_backward_index_dtype", lambda: torch.ops.torchmodules.nearest_neighbor_backward_input(
        r(3), r(3, 4), r(5, 4), torch.zeros(3, dtype=torch.int32)), None, RE,
     ["nearest_neighbor_backward_input", "index", "int64", "Int"]),
    ("nearest_neighbor_backward_index_shape", lambda: torch.ops.torchmodules.nearest_neighbor_backward_input(
        r(3), r(3, 4), r(5, 4), torch.zeros(3, 1, **i64)), None, RE,
     ["nearest_neighbor_backward_input", "index", "[3, 1]", "[3]"]),
]
if torch.cuda.is_available():
    BAD += [
        ("add_devices", lambda: TF.add(r(3), r(3, device="cuda")), lambda: torch.add(r(3, 2), r(3, 2, device="cuda")),
         RE, ["add", "cpu", "cuda"]),
        ("linear_devices", lambda: TF.linear(r(3, 4, device="cuda"), r(5, 4)), lambda: F.linear(r(3, 4, device="cuda"),
                                                                                                   r(5, 4)),
         None, ["linear", "cpu", "cuda"]),
        ("linear_relu_devices", lambda: TF.linear_relu(r(3, 4, device="cuda"), r(5, 4)),
         lambda: F.relu(F.linear(r(3, 4, device="cuda"), r(5, 4))), None, ["linear_relu", "cpu", "cuda"]),
        ("maximum_devices", lambda: TF.maximum(r(3, device="cuda"), r(3)), None, RE, ["maximum", "cpu", "cuda"]),
        ("cross_entropy_target_too_big_cuda", lambda: TF.cross_entropy(
            r(3, 4, device="cuda"), torch.tensor([0, 7, 1], device="cuda")), None,
         IndexError, ["cross_entropy", "target 7", "4 classes"]),
        ("cross_entropy_target_negative_cuda_nd", lambda: TF.cross_entropy(
            r(2, 40, 3, device="cuda"), torch.tensor([[0, 1, 2], [3, -5, 4]], device="cuda"), reduction="sum",
            label_smoothing=0.1), None, IndexError, ["cross_entropy", "target -5"]),
        ("cross_entropy_no_classes_cuda", lambda: TF.cross_entropy(
            r(3, 0, device="cuda"), torch.tensor([-100, 2, -100], device="cuda")), None, IndexError,
         ["cross_entropy", "target 2", "0 classes"]),
        ("cross_entropy_devices", lambda: TF.cross_entropy(r(3, 4, device="cuda"), torch.zeros(3, **i64)),
         lambda: F.cross_entropy(r(3, 4, device="cuda"), torch.zeros(3, **i64)), None,
         ["cross_entropy", "cpu", "cuda"]),
        ("nll_loss_devices", lambda: TF.nll_loss(r(3, 4, device="cuda"), torch.tensor([0, 1, 2])),
         lambda: F.nll_loss(r(3, 4, device="cuda"), torch.tensor([0, 1, 2])), None, ["nll_loss", "cpu", "cuda"]),
        ("nll_loss_weight_device", lambda: TF.nll_loss(r(3, 4, device="cuda"), torch.tensor([0, 1, 2], device="cuda"),
                                                       r(4)), None, RE, ["nll_loss", "weight", "cpu", "cuda"]),
        ("mse_loss_devices", lambda: TF.mse_loss(r(3, device="cuda"), r(3)),
         lambda: F.mse_loss(r(3, device="cuda"), r(3)), None, ["mse_loss", "cpu", "cuda"]),
        ("nearest_neighbor_devices", lambda: TF.nearest_neighbor(r(3, 4, device="cuda"), r(5, 4)),
         lambda: torch.cdist(r(3, 4, device="cuda"), r(5, 4)), RE, ["nearest_neighbor", "cpu", "cuda"]),
        ("nearest_neighbor_backward_index_device", lambda: torch.ops.torchmodules.nearest_neighbor_backward_input(
            r(3, device="cuda"), r(3, 4, device="cuda"), r(5, 4, device="cuda"), torch.zeros(3, **i64)), None,
         RE, ["nearest_neighbor_backward_input", "index", "cpu", "cuda"]),
        # Out-of-range classes on the GPU: an IndexError, not a device assert (so no torch twin here:
        # torch's own kernel would assert and spoil the CUDA context).
        ("nll_loss_class_too_big_cuda", lambda: TF.nll_loss(r(3, 4, device="cuda"),
                                                            torch.tensor([0, 4, 1], device="cuda")),
         None, IndexError, ["nll_loss", "target 4", "[0, 4)"]),
        ("nll_loss_class_negative_cuda_none", lambda: TF.nll_loss(
            r(3, 4, device="cuda"), torch.tensor([0, 1, -1], device="cuda"), reduction="none"),
         None, IndexError, ["nll_loss", "target -1"]),
        ("nll_loss_class_4d_cuda_sum", lambda: TF.nll_loss(
            r(2, 3, 2, 2, device="cuda"), torch.tensor([[[0, 1], [2, 7]], [[5, 0], [0, 0]]], device="cuda"),
            reduction="sum"), None, IndexError, ["nll_loss", "target 7", "flat index 3"]),
        ("nll_loss_class_big_batch_cuda", lambda: TF.nll_loss(
            r(20000, 3, device="cuda"), torch.cat([torch.zeros(19000, **i64), torch.full((1000,), 3)]).cuda()),
         None, IndexError, ["nll_loss", "target 3", "flat index 19000"]),
    ]


@pytest.mark.parametrize("call,torch_call,exc,words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises(call, torch_call, exc, words):
    torch_exc = None
    if torch_call is not None:  # torch rejects it too
        with pytest.raises(Exception) as t_info:
            torch_call()
        torch_exc = type(t_info.value)
    want = torch_exc if exc is None else exc
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is want, f"ours raises {type(info.value).__name__} ({info.value}), expected {want.__name__}"
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"
