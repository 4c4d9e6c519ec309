"""The loguru-style logger."""

import io

import pytest

from plugin.sdk.logger import PluginLogger, enable_plugin_file_logging, get_plugin_logger


def capture(level="DEBUG"):
    stream = io.StringIO()
    logger = PluginLogger("t", level=level).bind(plugin_id="demo")
    logger.remove()
    logger.add(stream, level=level)
    return logger, stream


def test_loguru_style_formatting():
    logger, out = capture()
    logger.info("x {} y", 1)
    logger.warning("pct %s", "ok")
    logger.debug("no args {braces} kept")
    logger.success("named {n}", n=5)
    logger.error("mismatch {}", )
    logger.critical("extra", 1, 2)
    lines = out.getvalue().splitlines()
    assert "| INFO     | demo | x 1 y" in lines[0]
    assert lines[1].endswith("pct ok")
    assert lines[2].endswith("no args {braces} kept")
    assert "| SUCCESS  |" in lines[3] and lines[3].endswith("named 5")
    assert lines[5].endswith("extra 1 2")


def test_bind_opt_and_exception():
    logger, out = capture()
    logger.bind(request="r1").info("hi")
    assert out.getvalue().splitlines()[-1].endswith("hi [request=r1]")
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("failed")
        logger.opt(exception=True).warning("again")
    text = out.getvalue()
    assert "Traceback (most recent call last):" in text and "KeyError: 'missing'" in text
    # Every line of a multi-line record carries the prefix.
    assert all(" | demo | " in line for line in text.splitlines())
    logger.opt(lazy=True).info("lazy {}", lambda: 42)
    assert out.getvalue().splitlines()[-1].endswith("lazy 42")


def test_levels_filter():
    logger, out = capture("WARNING")
    logger.info("hidden")
    logger.warning("shown")
    assert "hidden" not in out.getvalue() and "shown" in out.getvalue()
    with pytest.raises(ValueError):
        logger.log("LOUD", "x")


def test_file_logging(tmp_path, capsys):
    logger = enable_plugin_file_logging("demo", tmp_path, log_level="INFO")
    logger.info("to the file {}", 1)
    files = list((tmp_path / "logs").glob("demo_*.log"))
    assert len(files) == 1
    assert "to the file 1" in files[0].read_text()
    assert "to the file 1" in capsys.readouterr().err
    logger.remove()
    assert get_plugin_logger("x") is not None
