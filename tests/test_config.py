"""RunConfig: YAML + --set overrides, and rejection of bad configs before anything starts."""

from pathlib import Path

import pytest

from elmjax.config import ConfigError, RunConfig, dump_config, load_config, parse_duration

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(CONFIGS / "default.yaml") == RunConfig()


def test_paper_config_has_the_paper_grid_and_seeds():
    paper = load_config(CONFIGS / "elm_paper.yaml")
    assert paper.archive.shape == (12, 12, 12)
    assert len(paper.seed_programs) == 1  # the paper starts each run from one seed
    assert paper.mutation.temperature == 0.8


def test_overrides_are_typed_and_dotted(tmp_path):
    config = load_config(
        None,
        [
            "budget=100",
            "time_limit=30s",
            "mutation.temperature=1e-1",
            "archive.shape=[4, 5, 6]",
            "seed_programs=radial",
            "report=false",
        ],
    )
    assert config.budget == 100 and config.time_limit == 30.0
    assert config.mutation.temperature == pytest.approx(0.1)
    assert config.archive.shape == (4, 5, 6)
    assert config.seed_programs == ("radial",)
    assert config.report is False
    dump_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), (90, 90.0), ("30s", 30.0), ("10m", 600.0), ("1.5h", 5400.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(None) is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("budgt=3", "budgt"),
        ("mutation.temprature=0.5", "mutation.temprature"),
        ("nosuch.section=1", "nosuch"),
        ("budget=abc", "budget"),
        ("budget=1.5", "budget"),
        ("report=maybe", "report"),
        ("archive.shape=12", "archive.shape"),
        ("budget=0", "budget"),
        ("batch_size=-4", "batch_size"),
        ("time_limit=-5m", "time_limit"),
        ("time_limit=soon", "time_limit"),
        ("mutation.temperature=-1", "mutation.temperature"),
        ("mutation.temperature=nan", "mutation.temperature"),
        ("mutation.operator=magic", "mutation.operator"),
        ("mutation.children_per_prompt=5", "mutation.children_per_prompt"),
        ("archive.shape=[12, 0, 12]", "archive.shape"),
        ("archive.low=[0, 0]", "archive.low"),
        ("pipeline=parallel", "pipeline"),
        ("lag=-1", "lag"),
        ("env=3", "env"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key
    assert f"'{key}'" in str(err.value)


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("budget: 10\nmutation:\n  temperature: 0.5\n  opertor: gp\n")
    with pytest.raises(ConfigError, match="mutation.opertor"):
        load_config(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("time_limt=1m", "time_limit"),
        ("temperature=0.3", "mutation.temperature"),  # a known key without its section
        ("mutation.temprature=0.3", "mutation.temperature"),
        ("mutaton.temperature=0.3", "mutation"),
        ("archive.shap=[8, 8, 8]", "archive.shape"),
    ],
)
def test_unknown_key_suggests_the_closest(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"did you mean '{suggestion}'?" in str(err.value)


def test_unknown_key_in_a_yaml_file_suggests_too(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("budgte: 10\n")
    with pytest.raises(ConfigError, match="did you mean 'budget'"):
        load_config(path)


def test_far_fetched_key_gets_no_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["zzzzqqq=1"])
    assert "did you mean" not in str(err.value)


def test_errors_name_the_option_the_user_gave(tmp_path):
    missing = tmp_path / "nosuch.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value).startswith(f"--config {missing}: cannot read it")
    assert "config key" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["budget"])
    assert str(err.value).startswith("--set budget: must look like KEY=VALUE")
