"""The built-in world: a seeded universe that produces the data for every stage of the
Llama 2 paper, plus gold judges and a simulated annotator that score what a model does.

    from llamaforge.world import World, write_world, judges
    world = World.generate(seed=0, size="demo")
    write_world(world, "data/world")
    judges.helpfulness(world.prompts["helpful"][0], "Mira lives in Oakford.")
"""

from llamaforge.world import judges
from llamaforge.world.annotator import RATINGS, SAFETY_LABELS, Annotator, annotation_report, collect_preferences
from llamaforge.world.corpus import CORPUS_MIX, Document
from llamaforge.world.datacard import build_datacard, datacard_markdown
from llamaforge.world.gatt import Instruction, apply_instruction, turn_record
from llamaforge.world.io import (
    DataFileError, load_world, read_corpus, read_eval, read_gatt, read_jsonl, read_preferences, read_prompts,
    read_sft, replace_pieces, write_world,
)
from llamaforge.world.judges import (
    adherence, gold_reward, helpfulness, is_false_refusal, is_refusal, is_safety_prompt, safety_violation, toxicity,
    truthfulness,
)
from llamaforge.world.language import detect_language, from_veltan, to_veltan
from llamaforge.world.universe import Person, Town, Universe
from llamaforge.world.world import PROMPT_KINDS, SIZES, World, WorldSize

__all__ = [
    "World", "WorldSize", "SIZES", "PROMPT_KINDS", "Universe", "Person", "Town", "Document", "CORPUS_MIX",
    "write_world", "load_world", "replace_pieces", "DataFileError", "read_jsonl", "read_corpus", "read_sft",
    "read_prompts", "read_preferences", "read_eval", "read_gatt",
    "judges", "helpfulness", "is_refusal", "is_false_refusal", "safety_violation", "is_safety_prompt", "toxicity",
    "adherence", "truthfulness", "gold_reward",
    "Annotator", "RATINGS", "SAFETY_LABELS", "collect_preferences", "annotation_report",
    "Instruction", "apply_instruction", "turn_record", "to_veltan", "from_veltan", "detect_language",
    "build_datacard", "datacard_markdown",
]
