"""A data module built from a stage recipe's ``data:`` section (what export and benchmark read), with ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError


def datamodule_from_config(
    config: str | Path, overrides: dict[str, Any] | None = None
) -> ClassificationDataModule:
    """The DataModule of a run config (its ``data:`` section), with ``overrides`` on its init args:
    how export and benchmark scripts read the same data as training. The section is parsed by
    jsonargparse as ``shrink`` parses it, so a short ``class_path`` works the same."""
    import yaml

    if not Path(config).is_file():
        raise InputError(f"data config {config} does not exist: pass a YAML such as configs/sst2/qat.yaml")
    try:
        values = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        raise InputError(f"{config} is not a readable YAML file ({reason}): pass a run config") from None
    section = values.get("data") if isinstance(values, dict) else None
    if isinstance(section, str):  # a recipe naming its data file, relative to the recipe
        return datamodule_from_config_section(Path(config).parent / section, overrides, config)
    return datamodule_from_config_section(section, overrides, config)


def datamodule_from_config_section(
    section: Any, overrides: dict[str, Any] | None, config: str | Path
) -> ClassificationDataModule:
    """The DataModule of a ``data:`` section (a dict, or the path of a file holding one)."""
    import yaml
    from jsonargparse import ArgumentParser

    if isinstance(section, Path):
        if not section.is_file():
            raise InputError(f"{config} names the data file {section}, which does not exist: fix the path")
        section = yaml.safe_load(section.read_text(encoding="utf-8"))
    if not isinstance(section, dict) or "class_path" not in section:
        raise InputError(f"{config} has no data: section with a class_path: pass a run config")
    section = {**section, "init_args": {**(section.get("init_args") or {}), **(overrides or {})}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ClassificationDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"data": section})
    except Exception as e:  # noqa: BLE001 - jsonargparse's errors, condensed to one line
        reason = " ".join(str(e).split())[:300]
        raise InputError(
            f"the data: section of {config} is invalid ({reason}): fix it or the --set values"
        ) from None
    return parser.instantiate_classes(parsed).data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs of the export and benchmark scripts, values read as YAML."""
    import yaml

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--set {pair!r} is not KEY=VALUE: e.g. --set max_eval_samples=200")
        result[key] = yaml.safe_load(value)
    return result
