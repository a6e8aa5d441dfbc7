"""Bad input raises a clear Python exception that names the op and the offending shapes,
dtypes or devices (and torch's own op raises too, so we reject only what torch rejects)."""
import pytest
import torch

import torchmodules.functional as TF

F = torch.nn.functional
r = torch.randn
i64 = dict(dtype=torch.int64)

# (id, ours, torch's twin or None, exception type, words the message must contain)
BAD = [
    ("linear_shape", lambda: TF.linear(r(3, 4), r(5, 6)), lambda: F.linear(r(3, 4), r(5, 6)),
     ValueError, ["linear", "[3, 4]", "[5, 6]"]),
    ("linear_dtype", lambda: TF.linear(r(3, 4), r(5, 4).double()), lambda: F.linear(r(3, 4), r(5, 4).double()),
     TypeError, ["linear", "Float", "Double"]),
    ("linear_bias_shape", lambda: TF.linear(r(3, 4), r(5, 4), r(4)), lambda: F.linear(r(3, 4), r(5, 4), r(4)),
     ValueError, ["linear", "bias", "[4]"]),
    ("linear_int", lambda: TF.linear(torch.ones(3, 4, **i64), torch.ones(5, 4, **i64)), None,
     TypeError, ["linear", "Long", "[3, 4]"]),
    ("linear_weight_1d", lambda: TF.linear(r(3, 4), r(4)), None, ValueError, ["linear", "weight", "[4]"]),
    ("linear_input_0d", lambda: TF.linear(r(()), r(4, 1)), lambda: F.linear(r(()), r(4, 1)),
     ValueError, ["linear", "[]"]),
    ("relu_int", lambda: TF.relu(torch.ones(3, dtype=torch.int32)), None, TypeError, ["relu", "Int", "[3]"]),
    ("relu_complex", lambda: TF.relu(torch.ones(3, dtype=torch.complex64)), None, TypeError, ["relu", "Complex"]),
    ("add_shape", lambda: TF.add(r(3, 4), r(5)), lambda: torch.add(r(3, 4), r(5)),
     ValueError, ["add", "[3, 4]", "[5]"]),
    ("add_dtype", lambda: TF.add(r(3), r(3).double()), None, TypeError, ["add", "Float", "Double"]),
    ("maximum_shape", lambda: TF.maximum(r(3, 4), r(5)), lambda: torch.maximum(r(3, 4), r(5)),
     ValueError, ["maximum", "[3, 4]", "[5]"]),
    ("maximum_int", lambda: TF.maximum(torch.ones(3, **i64), torch.ones(3, **i64)), None,
     TypeError, ["maximum", "Long"]),
    ("amax_bad_dim", lambda: TF.amax(r(3, 4), 2), lambda: torch.amax(r(3, 4), 2), IndexError, ["amax", "dim 2"]),
    ("amax_repeated_dim", lambda: TF.amax(r(3, 4), (1, 1)), lambda: torch.amax(r(3, 4), (1, 1)),
     ValueError, ["amax", "[1, 1]"]),
    ("amax_empty", lambda: TF.amax(r(0, 4), 0), lambda: torch.amax(r(0, 4), 0), IndexError, ["amax", "[0, 4]"]),
    ("amax_int", lambda: TF.amax(torch.ones(3, **i64), 0), None, TypeError, ["amax", "Long"]),
    ("log_softmax_bad_dim", lambda: TF.log_softmax(r(3, 4), 5), lambda: torch.log_softmax(r(3, 4), 5),
     IndexError, ["log_softmax", "dim 5"]),
    ("log_softmax_int", lambda: TF.log_softmax(torch.ones(3, 4, **i64), 1), lambda: torch.log_softmax(
        torch.ones(3, 4, **i64), 1), TypeError, ["log_softmax", "Long"]),
    ("duplicate_n0", lambda: TF.duplicate(r(3), 0), None, ValueError, ["duplicate", "n", "0"]),
    ("duplicate_negative", lambda: TF.duplicate(r(3), -1), None, ValueError, ["duplicate", "-1"]),
    ("relu_backward_bad_mask", lambda: torch.ops.torchmodules.relu_backward(r(40), torch.zeros(3, dtype=torch.uint8)),
     None, ValueError, ["relu_backward", "mask", "[40]"]),
    ("maximum_backward_bad_which", lambda: torch.ops.torchmodules.maximum_backward(
        r(4), torch.zeros(4, dtype=torch.uint8), 2), None, ValueError, ["maximum_backward", "which"]),
]
if torch.cuda.is_available():
    BAD += [
        ("add_devices", lambda: TF.add(r(3), r(3, device="cuda")), lambda: torch.add(r(3, 2), r(3, 2, device="cuda")),
         (ValueError, RuntimeError), ["add", "cpu", "cuda"]),
        ("linear_devices", lambda: TF.linear(r(3, 4, device="cuda"), r(5, 4)), lambda: F.linear(r(3, 4, device="cuda"),
                                                                                                   r(5, 4)),
         (ValueError, RuntimeError), ["linear", "cpu", "cuda"]),
        ("maximum_devices", lambda: TF.maximum(r(3, device="cuda"), r(3)), None,
         (ValueError, RuntimeError), ["maximum", "cpu", "cuda"]),
    ]


@pytest.mark.parametrize("call,torch_call,exc,words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises(call, torch_call, exc, words):
    if torch_call is not None:  # torch rejects it too
        with pytest.raises(Exception):
            torch_call()
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"
