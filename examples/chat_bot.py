"""A minimal chat-bot style front end: reads "!anime <prompt>" lines, replies with a file.

Wire `reply` to your chat platform; everything else is the clipgan REST API. A bot runs
for weeks: give it an API key (`clipgan keys create bot`), which lasts until you revoke
it, not a password (an access token lasts minutes):

  CLIPGAN_URL=http://127.0.0.1:8000 CLIPGAN_API_KEY=cgk_... python examples/chat_bot.py

(With CLIPGAN_USERNAME and CLIPGAN_PASSWORD instead, it signs in and keeps refreshing.)
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from clipgan.client import ClientError, ClipganClient


def reply(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    client = ClipganClient(os.environ.get("CLIPGAN_URL", "http://127.0.0.1:8000"))
    if not os.environ.get("CLIPGAN_API_KEY"):  # the key, when set, is the client's default
        client.sign_in(os.environ["CLIPGAN_USERNAME"], os.environ["CLIPGAN_PASSWORD"])
    out_dir = Path(os.environ.get("BOT_OUTPUT", "bot-images"))
    out_dir.mkdir(exist_ok=True)
    for line in sys.stdin:
        if line.startswith("!sample"):
            name = line.removeprefix("!sample").strip() or None
            path = out_dir / f"sample-{uuid.uuid4().hex[:8]}.png"
            path.write_bytes(client.sample(seed=name))
            reply(f"here is {name or 'someone'}: {path}")
        elif line.startswith("!anime "):
            prompt = line.removeprefix("!anime ").strip()
            try:
                job, png = client.generate({"prompt": prompt, "steps": 40})
            except ClientError as exc:
                reply(f"sorry: {exc}")
                continue
            path = out_dir / f"{job['id']}.png"
            path.write_bytes(png)
            reply(f"'{prompt}' (seed {job['seed']}): {path}")


if __name__ == "__main__":
    main()
