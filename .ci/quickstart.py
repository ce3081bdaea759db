"""Print one of the README's two Quickstart commands: `demo` (the first) or `test` (the
second), so CI runs exactly what a newcomer is told to run."""

import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
section = readme.split("## Quickstart", 1)[1]
block = re.search(r"```sh\n(.*?)```", section, re.S)
if block is None:
    sys.exit("README.md: no ```sh block under ## Quickstart")
commands = [line for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]
if len(commands) != 2:
    sys.exit(f"README.md: the Quickstart must hold exactly two commands, found {len(commands)}")
print(commands[0 if sys.argv[1:] == ["demo"] else 1])
