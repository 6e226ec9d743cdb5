"""``bayesal labelstudio``: options and the refusal to expose an unauthenticated backend."""

from __future__ import annotations

import pytest

from bayesal.cli.commands import build_parser, main
from bayesal.labelstudio.server import is_loopback


def test_options_parse(tmp_path):
    args = build_parser().parse_args(["labelstudio", "--state-dir", str(tmp_path), "--port", "9191",
                                      "--strategy", "entropy", "--files-root", str(tmp_path)])
    assert (args.port, args.strategy, args.host, args.gamma, args.paper) == (9191, "entropy", "127.0.0.1", None, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["labelstudio", "--state-dir", str(tmp_path), "--strategy", "badge"])


def test_a_public_host_needs_basic_auth(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    assert main(["labelstudio", "--state-dir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--basic-auth" in capsys.readouterr().err
    assert main(["labelstudio", "--state-dir", str(tmp_path), "--host", "0.0.0.0", "--basic-auth", "nopass"]) == 2


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.3.0.1", True), ("::1", True),
                                        ("localhost", True), ("0.0.0.0", False), ("192.168.1.2", False), ("example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_label_studio_url_and_token_come_together(tmp_path, capsys, monkeypatch):
    pytest.importorskip("uvicorn")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    args = build_parser().parse_args(["labelstudio", "--state-dir", str(tmp_path), "--label-studio-url",
                                      "http://localhost:8080", "--label-studio-token", "abc"])
    assert (args.label_studio_url, args.label_studio_token) == ("http://localhost:8080", "abc")
    assert main(["labelstudio", "--state-dir", str(tmp_path), "--label-studio-url", "http://localhost:8080"]) == 2
    assert "--label-studio-token" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")  # the token from the environment, the URL malformed
    assert main(["labelstudio", "--state-dir", str(tmp_path), "--label-studio-url", "localhost:8080"]) == 2
    assert "--label-studio-url must be Label Studio's http(s) address" in capsys.readouterr().err
