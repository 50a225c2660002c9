"""Generated function keys can always be passed back as `--key KEY` (a key starting with "-" could not)."""
import re

from shared.local import cli
from shared.local.host import new_key


def test_generated_keys_never_start_with_a_dash_and_parse_as_a_key_argument():
    keys = [new_key() for _ in range(3000)]  # token_urlsafe gave a leading "-" once in 64
    assert all(re.fullmatch(r"[0-9a-f]{48}", k) for k in keys)
    assert len(set(keys)) == len(keys)
    args = cli._parser().parse_args(["replay", "--url", "http://127.0.0.1:1", "--key", keys[0]])
    assert args.key == keys[0]
