"""The transformers model families pretrained.py converts (one module and mapping table each).
FAMILY_LIST order is also the order in which export_hf tries the export targets."""
from typing import Dict, List

from hf_families.bert import BERT
from hf_families.distilbert import DISTILBERT
from hf_families.family import Family
from hf_families.gpt2 import GPT2
from hf_families.gpt_neox import GPT_NEOX
from hf_families.llama import LLAMA
from hf_families.opt import OPT

FAMILY_LIST: List[Family] = [GPT2, GPT_NEOX, LLAMA, OPT, BERT, DISTILBERT]
FAMILIES: Dict[str, Family] = {model_type: f for f in FAMILY_LIST for model_type in f.model_types}
