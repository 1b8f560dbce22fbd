"""The host layout: one home for paths, colors and admin ports, printed for the role."""

from __future__ import annotations

import json

import pytest

from sockact import layout
from sockact.cli import main


def test_colors_do_not_overlap_and_map_back() -> None:
    blue = layout.instances_of("blue", layout.MAX_PER_COLOR)
    green = layout.instances_of("green", layout.MAX_PER_COLOR)
    assert not set(blue) & set(green)
    assert {layout.color_of(i) for i in blue} == {"blue"}
    assert {layout.color_of(i) for i in green} == {"green"}
    assert layout.other_color("blue") == "green" and layout.other_color("green") == "blue"
    with pytest.raises(ValueError, match="no color"):
        layout.color_of(0)


def test_paths_follow_the_name_unless_given() -> None:
    host = layout.HostLayout("web")
    assert host.instance_config(3) == "/etc/web/instances/3.toml"
    assert host.instance_link(3) == "/opt/web/instances/3"
    assert host.sysctl_file == "60-web-reuseport.conf"
    moved = layout.HostLayout("web", "/srv/etc", "/srv/opt")
    assert moved.deploy_record == "/srv/etc/deploy.json"
    assert moved.deploy_intent == "/srv/etc/deploy.intent.json"
    assert moved.prometheus_targets == "/srv/etc/prometheus-targets.json"
    assert moved.release_meta("r1") == "/srv/opt/releases/r1/release.json"
    assert moved.release_dir("r1") == "/srv/opt/releases/r1"


def test_layout_command_prints_json_for_the_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layout", "--name", "web"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["admin_port_base"] == 9000
    assert data["unit_files"]["socket"] == ["web@.service", "web.socket", "web.service"]
    assert data["serve_mode_of"] == {"reuseport": "reuseport", "socket": "inherit"}
    # what the role reads instead of keeping copies (ansible/roles/sockact/tasks/layout.yml)
    for key in (
        "deploy_intent",
        "release_meta_file",
        "wheelhouse_dir",
        "instances_dir",
        "prometheus_targets",
    ):
        assert data[key], key


def test_layout_command_refuses_a_name_systemd_would_not_take(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["layout", "--name", "a b"]) == 2
    assert "name='a b'" in capsys.readouterr().err
