"""The spec's optional `code:` section: shorten the winner's code after selection (phase `shorten`),
and the checks that tie it, and `budget.bits`, to the rest of the spec.

    code:
      method: prune          # prune (drop hash units, DHWP) | merge (merge units, NMLayer-style)
      criterion: auto        # which units to keep; auto: the best on validation, per length
      lengths: [24, 16, 12]  # strictly descending, each below model.bits
      finetune_epochs: 3     # fine-tuning epochs after every step
      lr_decay: 0.5          # the learning rate times lr_decay at every step
      backbone_lr_ratio: 0.1 # the backbone's learning rate relative to the hash layer's
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from acpsearch.codelength import CRITERION_CHOICES, METHODS
from acpsearch.service.spec.fields import _field_error, _Section

CODE_METHODS = METHODS  # owned by the code-length library
CODE_CRITERIA = CRITERION_CHOICES  # its criteria plus `auto`
MAX_CODE_LENGTHS = 16


class CodeSpec(_Section):
    """Shorter codes for the winner: the lengths, how units are chosen, and the fine-tuning."""

    method: Literal[CODE_METHODS] = "prune"  # type: ignore[valid-type]
    criterion: Literal[CODE_CRITERIA] = "auto"  # type: ignore[valid-type]
    lengths: Annotated[list[int], Field(min_length=1, max_length=MAX_CODE_LENGTHS)]
    finetune_epochs: Annotated[int, Field(ge=0, le=1000)] = 3
    lr_decay: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    backbone_lr_ratio: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1

    @field_validator("lengths")
    @classmethod
    def _descending(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError(f"every length must be >= 1, got {min(v)}")
        for a, b in zip(v, v[1:]):
            if b >= a:
                raise ValueError(f"must be strictly descending (longest first), got {v}")
        return v


def check_code_options(spec: Any) -> None:
    """`code` and `budget.bits` against the model and the task: a length must be below model.bits,
    budget.bits at most model.bits; both are retrieval options; budget.bits prunes the hash layer's
    outputs, so a distillation term on the unpruned codes (finetune.distill) cannot apply."""
    code, bits = spec.code, spec.budget.bits
    if spec.task != "retrieval":
        if code is not None:
            raise _field_error(("code",), "{...}", "shorter codes are a retrieval option; a classifier has no code")
        if bits is not None:
            raise _field_error(("budget", "bits"), bits, "a code-length budget is a retrieval option")
        return
    if code is not None and code.lengths[0] >= spec.model.bits:
        raise _field_error(
            ("code", "lengths"),
            code.lengths,
            f"every length must be below model.bits = {spec.model.bits}, got {code.lengths[0]}",
        )
    if bits is not None:
        if bits > spec.model.bits:
            raise _field_error(
                ("budget", "bits"),
                bits,
                f"must be <= model.bits = {spec.model.bits} (the base code length), got {bits}",
            )
        if spec.finetune.distill > 0:
            raise _field_error(
                ("finetune", "distill"),
                spec.finetune.distill,
                "cannot distil from the unpruned codes when budget.bits shortens the code; set it to 0",
            )


def drop_unset(data: dict[str, Any]) -> dict[str, Any]:
    """A stored spec without `code: null` and `budget.bits: null` (specs stored before these keys
    existed stay byte for byte the same)."""
    if data.get("code") is None:
        data.pop("code", None)
    if (data.get("budget") or {}).get("bits", 0) is None:
        data["budget"].pop("bits")
    return data
