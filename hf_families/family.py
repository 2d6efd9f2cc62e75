"""`Family`: what it takes to move one transformers model family into our LM and back.

A family holds its transformers `model_type`s, how a config becomes our ModelParams (refusing, with
every reason, configs whose computation our custom-transformer layer does not reproduce), its mapping
table (hf_families/mapping.py), and, for families that trained runs can be exported to, the reverse:
which ModelParams it expresses and the transformers config that describes them.
"""
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from model.model_params import ModelParams
from hf_families.mapping import Rule


class UnsupportedConfig(ValueError):
    """A checkpoint's config uses options our layer does not implement (the message lists them)."""


@dataclass(frozen=True)
class Family:
    name: str  # as people call it: "GPT-2", "Llama"
    model_types: Tuple[str, ...]  # transformers' config.model_type values it covers
    model_params: Callable[[Any], ModelParams]  # transformers config -> ModelParams; raises UnsupportedConfig
    rules: Callable[[Any, ModelParams], List[Rule]]  # (config, params) -> the mapping table
    # how its models read (ModelParams.objective): "causal" (transformers' AutoModelForCausalLM) or "masked"
    # (an encoder, AutoModelForMaskedLM)
    objective: str = "causal"
    # checkpoint entries that are not weights (causal-mask or rotary buffers older checkpoints store,
    # an encoder's pre-training heads)
    ignored: Tuple[str, ...] = ()
    # exporting: ModelParams -> the transformers config (None: this family is not an export target)
    export_config: Optional[Callable[[ModelParams, Any], Any]] = None
    # exporting: field -> (allowed values, why) that this family expresses; every other field must keep
    # its default (a field this family has no equivalent for)
    exports: Optional[Dict[str, Tuple[Sequence[Any], str]]] = None
    # exporting: combinations of fields the family does not express ([] when fine)
    export_combinations: Optional[Callable[[ModelParams], List[str]]] = None

    def is_ignored(self, name: str) -> bool:
        return any(re.search(pattern, name) for pattern in self.ignored)

    def export_problems(self, mp: ModelParams) -> List[str]:
        """Why `mp` cannot be written as this family ([] when it can)."""
        if self.exports is None:
            return [f"{self.name} is not an export target"]
        problems = []
        for field in dataclasses.fields(ModelParams):
            value = getattr(mp, field.name)
            if field.name in TRAINING_ONLY:  # how the weights were trained, not what computes with them
                allowed, why = TRAINING_ONLY[field.name][self.objective]
                if allowed is not ANY and value not in allowed:
                    problems.append(f"{field.name}={value!r} ({why})")
            elif field.name in self.exports:
                allowed, why = self.exports[field.name]
                if allowed is not ANY and value not in allowed:
                    problems.append(f"{field.name}={value!r} ({why})")
            elif value != field.default:
                problems.append(f"{field.name}={value!r} (no {self.name} equivalent; only the default "
                                f"{field.default!r} is)")
        return problems + (self.export_combinations(mp) if self.export_combinations else [])


ANY: Sequence[Any] = ("any",)  # an `exports` entry: every value of the field is expressed
# ModelParams fields of the training objective, per family objective: a causal or fim model is a causal LM,
# a masked model is a masked LM (an encoder)
TRAINING_ONLY = {
    "objective": {"causal": (("causal", "fim"), "a transformers causal LM reads causally"),
                  "masked": (("masked",), "a transformers masked LM reads both ways and predicts masked tokens")},
    "mask_frac": {"causal": (ANY, ""), "masked": (ANY, "")},
    "fim_rate": {"causal": (ANY, ""), "masked": (ANY, "")},
}


def config_value(config: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` the config has (transformers renamed some fields across versions)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def refuse(family: str, problems: Sequence[str]) -> None:
    if problems:
        raise UnsupportedConfig(f"this {family} checkpoint uses options our custom-transformer layer does not "
                                f"implement: " + "; ".join(problems))


def rope_settings(config: Any) -> Dict[str, Any]:
    """{"rope_type", "rope_theta", "partial_rotary_factor"} of a config, whether transformers stores them
    in `rope_parameters` (5.x) or in the older `rope_scaling`, `rope_theta`, `rotary_pct`, ... fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", config_value(config, "rope_theta", "rotary_emb_base", default=10000.0))
    partial = params.get("partial_rotary_factor",
                         config_value(config, "partial_rotary_factor", "rotary_pct", default=1.0))
    return {"rope_type": rope_type, "rope_theta": float(theta), "partial_rotary_factor": float(partial)}


def rope_problems(config: Any) -> List[str]:
    rope_type = rope_settings(config)["rope_type"]
    if rope_type != "default":
        return [f"rope_type={rope_type!r} (rope scaling: we implement plain RoPE, inv_freq = 1 / base ** (2i / d))"]
    return []
