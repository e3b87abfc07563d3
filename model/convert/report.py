"""What a conversion did, key by key, and the one place where converted tensors meet the model.

Every importer turns its source into a ``{our parameter name: tensor}`` dict (plus the keys it dropped on
purpose) and hands it to :func:`load_converted`, which compares it with the freshly built model and fills a
:class:`ConversionReport`:

* ``loaded``: model tensors taken from the source;
* ``missing``: model tensors the source lacks (an error unless ``allow_partial``; then they stay freshly
  initialised);
* ``unexpected``: source tensors with no place in the model (an error unless ``allow_partial``; then dropped),
  named as the *source* names them;
* ``mismatched``: same name, different shape (an error unless ``allow_partial``; then the model keeps its
  fresh init);
* ``fresh``: model tensors that this *kind* of conversion never has a source for and initialises on purpose
  (the head for backbone-only weights, FASeg's own parts for a Mask2Former warm start);
* ``ignored``: source tensors dropped on purpose, with the reason (``criterion.empty_weight``, FrozenBN's
  ``num_batches_tracked``, an ImageNet classifier);
* ``derived``: model buffers computed rather than read (Swin's ``relative_position_index``);
* ``partial``: tensors filled partly from the source, with what stayed fresh.

The model is only touched once everything has been checked, so a failed conversion never leaves a
half-loaded model behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError
from ..faseg import FASeg


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted; the message names the file and the problem."""


@dataclass
class ConversionReport:
    source: str
    source_format: str
    target: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    allow_partial: bool = False

    @property
    def exact(self) -> bool:
        """True when every model tensor that this kind of conversion should fill came from the source."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def left_fresh(self) -> list[str]:
        """Every model tensor that holds a fresh initialisation after the conversion."""
        return sorted({*self.fresh, *self.missing, *(k for k, _, _ in self.mismatched)})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mismatched"] = [{"key": k, "source": list(s), "model": list(m)} for k, s, m in self.mismatched]
        data["exact"] = self.exact
        return data

    def summary(self) -> dict[str, Any]:
        """A compact form for checkpoint metadata: counts plus grouped key lists."""
        return {
            "source": self.source,
            "format": self.source_format,
            "exact": self.exact,
            "loaded": len(self.loaded),
            "fresh": group_keys(self.fresh),
            "missing": group_keys(self.missing),
            "unexpected": group_keys(self.unexpected),
            "mismatched": [f"{k}: source {list(s)} vs model {list(m)}" for k, s, m in self.mismatched],
            "ignored": sorted(self.ignored),
            "partial": self.partial,
            "derived": group_keys(self.derived),
            "notes": self.notes,
        }

    def format(self, max_keys: int = 40) -> str:
        """Human-readable report: a header line, then one section per non-empty category."""
        verdict = "exact" if self.exact else ("PARTIAL (--allow-partial)" if self.allow_partial else "FAILED")
        lines = [
            f"convert {self.source_format}: {self.source} -> {self.target}",
            f"  loaded {len(self.loaded)} tensors; result: {verdict}",
        ]

        def section(title: str, entries: list[str], count: int | None = None) -> None:
            if not entries:
                return
            lines.append(f"  {title} ({len(entries) if count is None else count}):")
            shown = entries if len(entries) <= max_keys else entries[:max_keys]
            lines.extend(f"    {e}" for e in shown)
            if len(entries) > max_keys:
                lines.append(f"    ... {len(entries) - max_keys} more")

        action = "left at fresh initialisation" if self.allow_partial else "error"
        section(f"missing from the source [{action}]", group_keys(self.missing), len(self.missing))
        section(
            f"unexpected in the source [{'dropped' if self.allow_partial else 'error'}]",
            group_keys(self.unexpected),
            len(self.unexpected),
        )
        section(
            f"shape mismatch [{action}]",
            [f"{k}: source {list(s)} vs model {list(m)}" for k, s, m in self.mismatched],
        )
        section("newly initialised (not part of this kind of source)", group_keys(self.fresh), len(self.fresh))
        section("partly loaded", [f"{k}: {why}" for k, why in sorted(self.partial.items())])
        section("ignored source keys", _group_reasons(self.ignored), len(self.ignored))
        section("derived, not read", _group_reasons(self.derived), len(self.derived))
        section("notes", list(self.notes))
        return "\n".join(lines)


_INDEX = re.compile(r"^\d+$")


@dataclass
class Conversion:
    """The result of an import: the loaded model (eval mode), the report and what goes into ``config.json``."""

    model: FASeg
    report: ConversionReport
    classes: list[str] | None = None
    input_size: tuple[int, int] | None = None


def group_keys(keys: Iterable[str]) -> list[str]:
    """Collapse tensor names to modules for display: ``a.b.3.c.weight`` + ``a.b.3.d.bias`` -> ``a.b.3.* (2)``.

    A key is grouped at its first numeric component (one block / layer), else at its parent module. Groups
    of one tensor are shown by their full name.
    """
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        parts = key.split(".")
        cut = next((i + 1 for i, p in enumerate(parts[:-1]) if _INDEX.match(p)), len(parts) - 1)
        prefix = ".".join(parts[:cut]) if cut else key
        groups.setdefault(prefix, []).append(key)
    # Then merge sibling blocks with the same content: layers.3.* + layers.7.* -> layers.{3,7}.* (n tensors).
    merged: dict[tuple[str, str], list[tuple[int, int]]] = {}
    singles: list[str] = []
    for prefix, members in groups.items():
        base, _, index = prefix.rpartition(".")
        if not _INDEX.match(index):
            singles.append(members[0] if len(members) == 1 else f"{prefix}.* ({len(members)})")
            continue
        tail = members[0][len(prefix) + 1 :] if len(members) == 1 else "*"
        merged.setdefault((base, tail), []).append((int(index), len(members)))
    out = list(singles)
    for (base, tail), entries in merged.items():
        indices = sorted(i for i, _ in entries)
        total = sum(n for _, n in entries)
        label = str(indices[0]) if len(indices) == 1 else "{" + _ranges(indices) + "}"
        out.append(f"{base}.{label}.{tail}" + (f" ({total})" if total > 1 else ""))
    return sorted(out)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else (f"{a},{b}" if b == a + 1 else f"{a}-{b}") for a, b in spans)


def _group_reasons(entries: dict[str, str]) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for key, reason in entries.items():
        by_reason.setdefault(reason, []).append(key)
    lines = []
    for reason, keys in by_reason.items():
        grouped = group_keys(keys)
        shown = ", ".join(grouped[:6]) + (f", ... ({len(keys)} tensors)" if len(grouped) > 6 else "")
        lines.append(f"{shown}: {reason}")
    return lines


# Deterministic buffers that a source may lack: filled from the freshly built model and reported as derived.
_DERIVABLE = {
    "relative_position_index": "computed from the window size (a constant buffer)",
    "num_batches_tracked": "BatchNorm batch counter, absent from the source (FrozenBN): kept at 0",
}


def load_converted(
    model: nn.Module,
    state: dict[str, Tensor],
    report: ConversionReport,
    *,
    expected_fresh: Callable[[str], bool] | None = None,
    partial: dict[str, Callable[[Tensor], Tensor]] | None = None,
    allow_partial: bool = False,
    source_names: dict[str, str] | None = None,
) -> None:
    """Check ``state`` (our names) against ``model``, fill ``report`` and load, or raise without touching it.

    Args:
        expected_fresh: model keys that this kind of conversion initialises on purpose when the source lacks them.
        partial: model key -> function(fresh tensor) returning the tensor to load (partly from the source);
            the report's ``partial`` entry must be filled by the caller.
        source_names: our name -> the source's own name, so unexpected keys are reported as the source spells them.
    """
    expected_fresh = expected_fresh or (lambda _key: False)
    partial = partial or {}
    source_names = source_names or {}
    own = model.state_dict()
    report.allow_partial = allow_partial

    for key, tensor in own.items():
        leaf = key.rsplit(".", 1)[-1]
        if key not in state and key not in partial and leaf in _DERIVABLE:
            state[key] = tensor.clone()
            report.derived[key] = _DERIVABLE[leaf]

    loadable: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(source_names.get(key, key))
        elif tuple(tensor.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(tensor.shape), tuple(own[key].shape)))
        else:
            loadable[key] = tensor
            if key not in report.derived:
                report.loaded.append(key)
    for key in own:
        if key in state:
            continue
        if key in partial:
            loadable[key] = partial[key](own[key])
            report.loaded.append(key)
        elif expected_fresh(key):
            report.fresh.append(key)
        else:
            report.missing.append(key)
    report.loaded.sort()
    report.unexpected.sort()
    report.mismatched.sort()
    report.fresh.sort()
    report.missing.sort()

    if not report.exact and not allow_partial:
        raise ConversionError(
            report.format() + "\nerror: the source does not match the model exactly (see above); fix the config "
            "(--preset / --set) or pass --allow-partial to keep the unmatched tensors freshly initialised"
        )
    full = {key: loadable.get(key, tensor) for key, tensor in own.items()}
    with torch.no_grad():
        model.load_state_dict(full, strict=True)
