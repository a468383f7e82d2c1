"""The login as a user does it: the Prefect UI in Debian's Chromium, driven by Playwright.

A real ``prefect server start`` serves its UI on loopback; ``dintero-login`` runs in its own process
and pauses. The browser opens the paused run, follows the login link from the run's logs to the
emulator's identity provider, comes back, pastes the redirect URL into the resume form and submits.
The run must complete and the session block must be saved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from prefect_dintero.emulator import EmulatorConfig, running_emulator

from ._servers import prefect_server_process

CHROMIUM = "/usr/bin/chromium"
# Flags that keep Debian's Chromium headless, offline and quiet in a container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("DINTERO_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)

LOGIN = textwrap.dedent(
    """
    import json, sys
    from pydantic import SecretStr
    from prefect_dintero import DinteroCredentials
    from prefect_dintero.flows import dintero_login

    url, client_id, secret, redirect = sys.argv[1:5]
    DinteroCredentials(
        account_id="T12345678", client_id=client_id, client_secret=SecretStr(secret),
        api_url=url, checkout_url=url, oidc_authorize_url=url + "/oidc/authorize",
        redirect_uri=redirect,
    ).save("browser-login", overwrite=True)
    facts = dintero_login("browser-login", "browser-session", timeout_seconds=240,
                          poll_interval_seconds=1)
    print("FACTS " + json.dumps(facts), flush=True)
    """
)

READ_SESSION = textwrap.dedent(
    """
    import json
    from prefect_dintero import DinteroOIDCSession
    s = DinteroOIDCSession.load("browser-session")
    print(json.dumps({"user": s.to_token().user_info.name, "account": s.credentials.account_id,
                      "refreshable": s.refresh_token is not None,
                      "expires_at": s.expires_at.isoformat()}))
    """
)


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _api(env: dict[str, str]) -> str:
    return env["PREFECT_API_URL"]


def _wait_for_state(env: dict[str, str], state_type: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(
            f"{_api(env)}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": [state_type]}}}},
        ).json()
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no flow run reached {state_type} within {timeout} s")


@pytest.mark.slow
def test_login_in_a_real_browser_through_the_prefect_ui(tmp_path, evidence):
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / "browser-login"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with (
        running_emulator(EmulatorConfig(refresh_tokens=True)) as emu,
        prefect_server_process(tmp_path, ui=True) as env,
    ):
        evidence.scan_path(tmp_path)
        config = emu.config
        ui = _api(env).removesuffix("/api")
        login = subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOGIN,
                emu.url,
                config.client_id,
                config.client_secret,
                # The emulator's own callback page: it shows the URL to paste.
                emu.callback_url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            paused = _wait_for_state(env, "PAUSED", timeout=120)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=executable, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{ui}/runs/flow-run/{paused['id']}")
                expect(page.get_by_text("Paused").first).to_be_visible(timeout=30_000)

                # The login link the flow logged, followed as the user would: the identity
                # provider's login page, its button, then the callback page with the URL.
                link = page.locator("a[href*='/oidc/authorize']").first
                expect(link).to_be_visible(timeout=30_000)
                idp = browser.new_page(viewport={"width": 1000, "height": 700})
                idp.goto(link.get_attribute("href"))
                button = idp.get_by_role("button", name=f"Log in as {config.user.name}")
                expect(button).to_be_visible()
                idp.screenshot(path=shots / "0-emulator-login-page.png")
                button.click()
                expect(idp.get_by_text("Logged in to Dintero")).to_be_visible()
                redirect = idp.url
                assert redirect.startswith(emu.callback_url) and "state=" in redirect
                # What the page shows to copy is that URL.
                assert idp.locator("#redirect-url").input_value() == redirect
                idp.screenshot(path=shots / "0-emulator-callback-page.png")
                idp.close()

                page.get_by_role("button", name="Resume").click()
                form = page.get_by_role("dialog")
                expect(form.get_by_text("Redirect URL")).to_be_visible()
                page.screenshot(path=shots / "1-resume-form.png")
                form.locator("textarea").fill(redirect)
                form.get_by_role("button", name="Submit").click()

                completed = _wait_for_state(env, "COMPLETED", timeout=120)
                assert completed["id"] == paused["id"]
                page.reload()
                expect(page.get_by_text("Completed").first).to_be_visible(timeout=30_000)
                expect(page.get_by_text("Finished in state Completed").last).to_be_visible(
                    timeout=30_000
                )
                page.screenshot(path=shots / "2-completed.png")
                browser.close()
            output, _ = login.communicate(timeout=60)
        finally:
            if login.poll() is None:
                login.kill()
                login.communicate()
        assert login.returncode == 0, output[-3000:]
        facts = json.loads(output.split("FACTS ", 1)[1].splitlines()[0])
        assert facts["user_name"] == config.user.name and facts["refreshable"]

        saved = subprocess.run(
            [sys.executable, "-c", READ_SESSION], env=env, capture_output=True, text=True
        )
        assert saved.returncode == 0, saved.stderr[-3000:]
        session = json.loads(saved.stdout)
        assert session["user"] == config.user.name
        assert session["account"] == "T12345678" and session["refreshable"]

        # The pasted URL (with its code) does not stay in Prefect's run input.
        for suffix in ("response", "schema", "description"):
            gone = httpx.get(
                f"{_api(env)}/flow_runs/{paused['id']}/input/paused-dintero-login-{suffix}"
            )
            assert gone.status_code == 404, suffix
        # The code the browser carried was exchanged exactly once.
        assert emu.stats()["token_grants"].get("authorization_code", 0) >= 1
    evidence.note(
        f"browser login: Chromium {_version(executable)} completed the paused run "
        f"from the Prefect UI; screenshots in {shots}"
    )


def _version(executable: str) -> str:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out else "?"
