"""Seed programs for Sodarace, as plain program text.

The seeds are ordinary `.py` files in this folder, written for this project from the ELM paper's
descriptions (Lehman et al. 2022): the four ELM seeds (`ELM_SEEDS`: Square as in the paper's
Listing 1, Radial, CPPN-Fixed, CPPN-Mutable) and the three hand-designed walkers the paper uses
as a locomotion reference (`HAND_DESIGNED`: Wheel, Galloper, Runner).

They are data, not modules: each defines `make_walker()` and calls `walker_creator()`, which the
sandbox injects into the program's globals, exactly as a language model's mutant will. They import
nothing from elmjax (only `math`), and are kept short, commented and with named constants, since a
language model reads and edits them.
"""

from __future__ import annotations

from importlib import resources

#: The ELM paper's four seeds, in the paper's order.
ELM_SEEDS: tuple[str, ...] = ("square", "radial", "cppn_fixed", "cppn_mutable")
#: The paper's hand-designed walkers: they locomote, so they calibrate the simulator.
HAND_DESIGNED: tuple[str, ...] = ("wheel", "galloper", "runner")
#: The program every seed defines and the sandbox calls.
ENTRY = "make_walker"


def load_seed(name: str) -> str:
    """The program text of one seed, by name (see `ELM_SEEDS`, `HAND_DESIGNED`)."""
    if name not in ELM_SEEDS + HAND_DESIGNED:
        raise KeyError(f"unknown seed {name!r}; known: {', '.join(ELM_SEEDS + HAND_DESIGNED)}")
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")


def load_seeds(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Seed name -> program text; every seed (ELM seeds first) unless `names` picks some."""
    return {name: load_seed(name) for name in (names or ELM_SEEDS + HAND_DESIGNED)}
