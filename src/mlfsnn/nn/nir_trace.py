"""Record what an mlfsnn network computes, layer by layer, by running it once (the first half of to_nir).

A network is any ``nn.Module`` whose forward, on time-first input ``[T, B, ...]``, calls the library's
blocks: ``Conv2d`` / ``Linear`` (on time folded into batch, as :func:`mlfsnn.nn.resnet.fold` does),
:class:`~mlfsnn.TdBatchNorm`, :class:`~mlfsnn.MLF`, average pooling, ``Flatten``, ``Dropout`` /
``Identity`` (eval: no-ops), sums of such values (residual joins) and, at the end, the mean over the
time steps. Running it records each call (a forward hook per layer) and each tensor operation between
calls (a ``TorchFunctionMode``), so the graph is what the forward really does, whatever the container.
Anything else is refused in one line naming the module or the operation, before any NIR is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError
from .fused import fusion
from .neurons import MLF
from .tdbn import TdBatchNorm

__all__ = ["LEAVES", "Layer", "NIRExportError", "trace"]

# Modules to_nir understands, by what they become (containers around them are walked through).
LEAVES: dict[type, str] = {
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    TdBatchNorm: "tdbn",
    MLF: "neuron",
    nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool2d: "avgpool",
    nn.Flatten: "flatten",
    nn.Dropout: "identity",
    nn.Dropout2d: "identity",
    nn.Identity: "identity",
}
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SUPPORTED_TEXT = (
    "Conv2d, Linear, TdBatchNorm, MLF, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
    "sums of their outputs and a mean over time steps at the end"
)


class NIRExportError(ConfigError):
    """A network (or an argument) that :func:`~mlfsnn.nn.to_nir` cannot write as NIR (a ``ValueError``)."""


@dataclass
class Layer:
    """One recorded call: what it is, whose outputs it sums, and its per-sample output shape."""

    name: str
    kind: str  # input | conv | linear | tdbn | neuron | avgpool | flatten | output
    sources: list[str]
    shape: tuple[int, ...]
    module: nn.Module | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Val:
    """A traced tensor: the sum of some layers' outputs, per sample ``shape``, ``[T, B]`` or folded."""

    sources: tuple[str, ...]
    shape: tuple[int, ...]
    folded: bool


@dataclass(frozen=True)
class _Steps:
    """The readout being formed: the sum of ``val`` at time steps ``steps``, divided by ``divisor``."""

    val: _Val
    steps: tuple[int, ...]
    divisor: float = 1.0


def _named(model: nn.Module) -> dict[nn.Module, str]:
    names: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        names.setdefault(m, name)
    return names


def _check_modules(model: nn.Module) -> None:
    """Refuse, by name, every module with no children that is none of :data:`LEAVES` (an empty
    container aside): its forward would compute something the graph cannot hold."""

    def unknown(m: nn.Module) -> bool:
        return not any(True for _ in m.children()) and type(m) not in LEAVES and not isinstance(m, CONTAINERS)

    bad = [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if name and unknown(m)]
    if unknown(model):
        bad.insert(0, f"the model ({type(model).__name__})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NIRExportError(
            f"to_nir cannot export module {', '.join(bad[:3])}{more}: supported are {SUPPORTED_TEXT}"
        )


def _dims(ndim: int, start: int, end: int) -> tuple[int, int]:
    start, end = start % ndim if start < 0 else start, end % ndim if end < 0 else end
    return start, end


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, steps: int, batch: int) -> None:
        super().__init__()
        self.names = _named(model)
        self.steps, self.batch = steps, batch
        self.tags: dict[int, tuple[Tensor, _Val | _Steps]] = {}
        self.layers: dict[str, Layer] = {}
        self.stack: list[str] = []
        self.inside = 0  # > 0 while a recorded layer runs: its own tensor operations are its business

    # --- tags -------------------------------------------------------------------------------------
    def tag(self, x: Any) -> _Val | _Steps | None:
        entry = self.tags.get(id(x)) if isinstance(x, Tensor) else None
        return entry[1] if entry is not None and entry[0] is x else None

    def put(self, x: Tensor, value: _Val | _Steps) -> None:
        self.tags[id(x)] = (x, value)

    def where(self) -> str:
        return f"module {self.stack[-1]!r}" if self.stack and self.stack[-1] else "the model's forward"

    def fail(self, what: str) -> NIRExportError:
        return NIRExportError(
            f"to_nir cannot export {what} in {self.where()}: supported are {SUPPORTED_TEXT}"
        )

    def new_layer(
        self, name: str, kind: str, sources: tuple[str, ...], shape: tuple[int, ...], **kw: Any
    ) -> str:
        name = base = name or kind
        n = 1
        while name in self.layers:  # a module called twice: one layer per call
            name, n = f"{base}_{n}", n + 1
        self.layers[name] = Layer(name, kind, list(sources), tuple(int(v) for v in shape), **kw)
        return name

    # --- tensor operations between layers -----------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        flat = [b for a in (*args, *kwargs.values()) for b in (a if isinstance(a, (list, tuple)) else (a,))]
        if not any(self.tag(a) is not None for a in flat) or not isinstance(out, Tensor):
            return out  # shapes, dims, sizes, or tensors the network makes itself
        value = self.operation(getattr(func, "__name__", str(func)), args, kwargs)
        self.put(out, value)
        return out

    def operation(self, name: str, args: tuple, kwargs: dict) -> _Val | _Steps:
        x, rest = args[0], args[1:]
        v = self.tag(x)
        if name in ("clone", "contiguous", "detach", "detach_", "to", "float", "double") and v is not None:
            return v  # a copy, or another dtype or device: the same value
        if name == "flatten" and isinstance(v, _Val):
            start = kwargs.get("start_dim", rest[0] if rest else 0)
            end = kwargs.get("end_dim", rest[1] if len(rest) > 1 else -1)
            return self.flatten(v, x.dim(), int(start), int(end))
        if name == "unflatten" and isinstance(v, _Val) and v.folded:
            dim = kwargs.get("dim", rest[0] if rest else None)
            sizes = kwargs.get("sizes", rest[1] if len(rest) > 1 else ())
            if dim == 0 and tuple(int(s) for s in sizes) == (self.steps, self.batch):
                return _Val(v.sources, v.shape, folded=False)
        if name in ("add", "add_", "__add__", "__iadd__") and len(args) == 2:
            return self.add(v, self.tag(args[1]), kwargs)
        if name == "__radd__" and len(args) == 2:  # args[1] + x: its terms first, as the model adds
            return self.add(self.tag(args[1]), v, kwargs)
        if name == "__getitem__" and isinstance(v, _Val) and not v.folded and isinstance(rest[0], int):
            return _Steps(v, (rest[0] % self.steps,))
        number = bool(rest) and isinstance(rest[0], (int, float)) and not isinstance(rest[0], bool)
        if name in ("div", "div_", "__truediv__", "__itruediv__") and isinstance(v, _Steps) and number:
            return _Steps(v.val, v.steps, v.divisor * float(rest[0]))
        if name == "mean" and isinstance(v, _Val) and not v.folded:
            dim = kwargs.get("dim", rest[0] if rest else None)
            if dim in (0, (0,), [0]) and not kwargs.get("keepdim", rest[1] if len(rest) > 1 else False):
                return _Steps(v, tuple(range(self.steps)), float(self.steps))
        raise self.fail(f"the tensor operation {name}")

    def add(self, a: Any, b: Any, kwargs: dict) -> _Val | _Steps:
        if kwargs.get("alpha", 1) != 1 or a is None or b is None:
            raise self.fail("a sum with a constant or an untraced tensor")
        if isinstance(a, _Val) and isinstance(b, _Val) and (a.shape, a.folded) == (b.shape, b.folded):
            return _Val(a.sources + b.sources, a.shape, a.folded)
        steps = isinstance(a, _Steps) and isinstance(b, _Steps) and a.val == b.val
        if steps and a.divisor == b.divisor == 1 and not set(a.steps) & set(b.steps):
            return _Steps(a.val, a.steps + b.steps)
        raise self.fail("a sum of values of different shapes or time steps")

    def flatten(self, v: _Val, ndim: int, start: int, end: int, name: str = "flatten") -> _Val:
        start, end = _dims(ndim, start, end)
        lead = 1 if v.folded else 2
        if not v.folded and (start, end) == (0, 1):
            return _Val(v.sources, v.shape, folded=True)
        if start >= lead and end >= start:
            s, e = start - lead, end - lead
            shape = (*v.shape[:s], math.prod(v.shape[s : e + 1]), *v.shape[e + 1 :])
            if shape == v.shape:
                return v
            name = self.new_layer(
                name,
                "flatten",
                v.sources,
                shape,
                params={"input": v.shape, "start": s, "end": -1 if e == len(v.shape) - 1 else e},
            )
            return _Val((name,), shape, v.folded)
        raise self.fail(
            f"flatten(start_dim={start}, end_dim={end}) of a [{'T*B' if v.folded else 'T, B'}, ...] value"
        )

    # --- layers -----------------------------------------------------------------------------------
    def before(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(self.names.get(module, ""))
        if type(module) in LEAVES:
            self.inside += 1

    def after(self, module: nn.Module, args: tuple, out: Any) -> None:
        kind = LEAVES.get(type(module))
        if kind is not None:
            self.inside -= 1
            v = self.tag(args[0]) if args else None
            if not isinstance(v, _Val) or not isinstance(out, Tensor):
                raise self.fail(f"a call of {type(module).__name__} on a value that is not the network's")
            self.put(out, self.layer(kind, module, v, out))
        self.stack.pop()

    def layer(self, kind: str, module: nn.Module, v: _Val, out: Tensor) -> _Val:
        name = self.names.get(module, "")
        if kind == "identity":
            return v
        if kind == "flatten":
            ndim = len(v.shape) + (1 if v.folded else 2)
            return self.flatten(v, ndim, module.start_dim, module.end_dim, name or "flatten")
        lead = 1 if v.folded else 2
        shape = tuple(out.shape[lead:])
        if kind in ("tdbn", "neuron"):
            if v.folded:
                raise self.fail(f"{type(module).__name__} on time folded into batch (it needs [T, B, ...])")
            return _Val((self.new_layer(name, kind, v.sources, shape, module=module),), shape, False)
        if kind == "conv" and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise self.fail(
                f"Conv2d {name!r} with groups={module.groups}, padding={module.padding!r}, "
                f"padding_mode={module.padding_mode!r} (groups=1, integer zero padding only)"
            )
        if kind == "avgpool":
            params = self.pool(module, v.shape, name)
            return _Val((self.new_layer(name, kind, v.sources, shape, params=params),), shape, v.folded)
        return _Val((self.new_layer(name, kind, v.sources, shape, module=module),), shape, v.folded)

    def pool(self, module: nn.Module, shape: tuple[int, ...], name: str) -> dict[str, Any]:
        if len(shape) != 3:
            raise self.fail(
                f"{type(module).__name__} {name!r} on a {len(shape)}-D value (expected [C, H, W])"
            )
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
            size = tuple(shape[1 + i] if s is None else int(s) for i, s in enumerate(size))
            if any(shape[1 + i] % size[i] for i in range(2)):
                raise self.fail(f"AdaptiveAvgPool2d {name!r} to {size} from {shape[1:]} (sizes must divide)")
            kernel = tuple(shape[1 + i] // size[i] for i in range(2))
            return {"kernel": kernel, "stride": kernel, "padding": (0, 0)}

        def pair(v: Any) -> tuple[int, int]:
            return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

        kernel = pair(module.kernel_size)
        stride, padding = pair(module.stride if module.stride is not None else kernel), pair(module.padding)
        if module.ceil_mode or module.divisor_override or (any(padding) and not module.count_include_pad):
            raise self.fail(
                f"AvgPool2d {name!r} with ceil_mode, divisor_override or count_include_pad=False and padding"
            )
        return {"kernel": kernel, "stride": stride, "padding": padding}


@contextmanager
def _hooked(model: nn.Module, tracer: _Tracer) -> Iterator[None]:
    """Hooks on every module (which also keeps tdbn_fire off its fused kernel: it would hide the calls)."""
    with ExitStack() as stack:
        for m in model.modules():
            stack.callback(m.register_forward_pre_hook(tracer.before).remove)
            stack.callback(m.register_forward_hook(tracer.after).remove)
        flags = [(m, m.training) for m in model.modules()]
        stack.callback(lambda: [m.train(f) for m, f in flags])
        model.eval()  # tdBN on its running statistics; the flags are restored on the way out
        stack.enter_context(fusion(False))
        stack.enter_context(torch.no_grad())
        yield


def trace(model: nn.Module, input_shape: tuple[int, ...], steps: int = 2, batch: int = 1) -> dict[str, Layer]:
    """The layers ``model`` computes on ``[steps, batch, *input_shape]`` in call order, then ``output``."""
    _check_modules(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(steps, batch, *input_shape, dtype=dtype, device=device)
    tracer = _Tracer(model, steps, batch)
    tracer.layers["input"] = Layer("input", "input", [], tuple(input_shape))
    tracer.put(x, _Val(("input",), tuple(input_shape), folded=False))
    with _hooked(model, tracer):
        try:
            with tracer:
                out = model(x)
        except NIRExportError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise NIRExportError(
                f"to_nir could not run the model on input {tuple(x.shape)}: {reason}"
            ) from None
    v = tracer.tag(out)
    if not (isinstance(v, _Steps) and sorted(v.steps) == list(range(steps)) and v.divisor == steps):
        raise NIRExportError(
            "to_nir exports networks whose output is the mean over time steps of a per-step value "
            "([T, B, ...] -> [B, ...], as SpikingResNet's); this model returns something else"
        )
    tracer.layers["output"] = Layer("output", "output", list(v.val.sources), v.val.shape)
    return tracer.layers
