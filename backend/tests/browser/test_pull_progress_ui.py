"""The logs drawer's per-image pull list, against a real pull: a private image of a real ``docker-registry``
(htpasswd auth), served through a throttling proxy so that its pull lasts seconds, and that holds the rest of the
layer until the test lets it go. The drawer shows the image's status, bytes and layers moving live from
``DEPLOYMENT_PULL_PROGRESS``; a page opened mid-pull catches up (the pull reports where it stands a few times a
second, moving or not)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from backend.tests.browser.conftest import Server, force_remove, navigate, new_page, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status
from backend.tests.docker.test_private_registry import forget, push_fresh_layer
from backend.tests.registry_fixtures import PASSWORD, USERNAME, LocalRegistry, SlowProxy, start_registry, stop_registry

LAYER = 8_000_000
RATE = 800_000  # bytes a second through the proxy: the first 6 MB take about 7 s
HELD = 6_000_000  # then the proxy holds the rest until resumed (a second page opens meanwhile)

# Records, inside the page, every (status, bytes) the pull row takes, as it happens.
RECORDER = """
() => {
  window.__pull = [];
  const scan = () => {
    const row = document.querySelector('[data-testid=pull-row]');
    if (!row) return;
    const seen = [row.getAttribute('data-status'), Number(row.getAttribute('data-bytes'))];
    const last = window.__pull[window.__pull.length - 1];
    if (!last || last[0] !== seen[0] || last[1] !== seen[1]) window.__pull.push(seen);
  };
  new MutationObserver(scan).observe(document.body, { subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-status', 'data-bytes'] });
  scan();
}
"""


@pytest.fixture(scope="module")
def slow_registry(tmp_path_factory) -> Iterator[tuple[LocalRegistry, SlowProxy]]:
    registry = start_registry(tmp_path_factory.mktemp("ui-registry"), auth=True)
    proxy = SlowProxy(registry.server, rate=RATE, stall_after=HELD)
    yield registry, proxy
    proxy.close()
    stop_registry(registry)


def test_the_drawer_lists_each_image_being_pulled_live(
    realtime, chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments, slow_registry
) -> None:
    registry, proxy = slow_registry
    pushed = push_fresh_layer(registry, LAYER)
    reference = f"{proxy.server}/{pushed.removeprefix(registry.server + '/')}"
    deployment = None
    try:
        server.api(
            "POST",
            "/registries",
            {"organization_id": org_id, "name": "slow", "server": proxy.server, "username": USERNAME, "password": PASSWORD},
            token=admin_token,
        )
        stack = server.api(
            "POST",
            "/stacks",
            {
                "organization_id": org_id,
                "name": "pulled",
                "template": f'services:\n  app:\n    image: {reference}\n    init: true\n    command: ["sleep", "600"]\n',
                "variables": [],
            },
            token=admin_token,
        )
        page = new_page(chromium_browser)
        ui_login(page, server)
        deployment = server.api(
            "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "pulled"}, token=admin_token
        )
        cleanup_deployments.append(deployment["id"])
        navigate(page, f"/deployments?logs={deployment['id']}")
        page.evaluate(RECORDER)
        row = page.locator(f"[data-testid=pull-row][data-image='{reference}']")
        page.wait_for_function(
            "(() => { const r = document.querySelector('[data-testid=pull-row]');"
            " return r && r.getAttribute('data-status') === 'downloading' && Number(r.getAttribute('data-bytes')) > 0 })()",
            timeout=60_000,
        )
        figures = row.get_by_test_id("pull-figures").inner_text()
        assert re.fullmatch(r"\d+\.\d of \d+\.\d MB · \d+/\d+ layers", " ".join(figures.split())), figures
        assert row.get_by_test_id("pull-status").inner_text() == "downloading"
        screenshot(page, "logs-drawer-pull-en-light")

        # A page opened mid-pull (French, dark) catches up from the next event.
        late = new_page(chromium_browser, locale="fr-FR", dark=True)
        ui_login(late, server)
        navigate(late, f"/deployments?logs={deployment['id']}")
        late_row = late.locator(f"[data-testid=pull-row][data-image='{reference}']")
        late_row.wait_for(timeout=15_000)
        assert re.fullmatch(
            r"\d+\.\d sur \d+\.\d Mo · \d+/\d+ couches", " ".join(late_row.get_by_test_id("pull-figures").inner_text().split())
        )
        screenshot(late, "logs-drawer-pull-fr-dark")
        late.close()

        proxy.resume()  # the rest of the layer
        final = wait_status(server, admin_token, deployment["id"], {"running", "failed"})
        assert final["status"] == "running", final
        # running: no list. Waited for before reading what the row showed: the API says running as soon as the
        # server does, and a page on a loaded machine may not have drawn the last pull events yet
        page.wait_for_selector("[data-testid=pull-list]", state="detached", timeout=30_000)
        seen = page.evaluate("window.__pull")
        downloading = [b for status, b in seen if status == "downloading"]
        assert len(set(downloading)) >= 2, seen  # the bytes moved live
        assert downloading == sorted(downloading), seen
        assert seen[-1][0] == "pulled" and seen[-1][1] >= LAYER, seen  # the last state, before the list closed

        # The deployment page's Services card: the image as named, its tag, the digest the pull pinned (the API's,
        # shown short, the full one kept for the copy button) and its size.
        [recorded] = final["images"]
        assert recorded["digest"].startswith("sha256:") and recorded["size"] > LAYER, recorded
        navigate(page, f"/deployments/{deployment['id']}")
        card = page.get_by_test_id("service-app")
        card.wait_for()
        shown = card.get_by_test_id("service-digest")
        assert shown.get_attribute("data-digest") == recorded["digest"]
        assert recorded["digest"][:19] in shown.inner_text() and recorded["digest"] not in shown.inner_text()
        repository, tag = reference.rsplit(":", 1)
        assert card.get_by_test_id("service-image").inner_text() == repository
        assert card.get_by_test_id("service-tag").inner_text() == tag
        assert card.get_by_test_id("service-size").inner_text() == f"{recorded['size'] / 1e6:.1f} MB"
        assert card.get_by_test_id("service-copy-digest").is_visible()
        card.scroll_into_view_if_needed()
        screenshot(page, "deployment-services-digest-en-light")
        page.close()
    finally:
        if deployment is not None:  # its container goes first: the image it ran is then removed, not just untagged
            force_remove(deployment["id"])
        forget(reference)
        forget(pushed)
