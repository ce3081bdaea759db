"""`hub admin`: bad arguments are refused before anything starts or asks for a password,
and the actions behind it refuse what the API would (a blank agency name, an agency that
does not exist)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hub.actions import do_create_agency
from hub.context import Hub
from hub.errors import NotFound, ValidationFailed
from hub.users import Role, do_create_user

ROOT = Path(__file__).resolve().parent.parent


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    # No stdin: a password prompt would fail the command rather than wait.
    return subprocess.run([sys.executable, "-m", "hub.cli", "admin", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "says"), [
    (["--agency", "nope", "--grant", f"{uuid.uuid4()}:admin"], "is not an agency id"),
    (["--agency", str(uuid.uuid4()), "--grant", "x:admin"], "use SUB_ACCOUNT_ID:ROLE"),
    (["--agency", str(uuid.uuid4()), "--grant", f"{uuid.uuid4()}:boss"],
     "use SUB_ACCOUNT_ID:ROLE"),
    (["--agency", str(uuid.uuid4()), "--grant", "11111111-1111-1111-1111-111111111111:admin",
      "--grant", "11111111-1111-1111-1111-111111111111:agent"], "granted twice"),
])
def test_create_user_refuses_bad_arguments_before_the_password_prompt(
    args: list[str], says: str
) -> None:
    done = _admin("create-user", "ann@example.com", *args)
    assert done.returncode == 2, done.stderr
    assert says in " ".join(done.stderr.split()), done.stderr
    assert "Password" not in done.stdout + done.stderr


async def test_an_agency_needs_a_name(hub: Hub) -> None:
    with pytest.raises(ValidationFailed) as err:
        await do_create_agency(hub, "   ")
    assert err.value.errors[0].field == "name"


async def test_a_user_of_an_unknown_agency_is_refused_as_such(hub: Hub) -> None:
    with pytest.raises(NotFound) as err:
        await do_create_user(hub, uuid.uuid4(), "nobody@example.com", "a long password!",
                             "", {uuid.uuid4(): Role.AGENT})
    assert err.value.code == "agency_not_found"
