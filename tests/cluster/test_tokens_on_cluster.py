"""The tokens suite's store tests (tests/http/test_tokens.py) against a Redis Cluster: the tokens
hash, the workers' reports and shard 0's outbox share one slot, so token.lua runs there as on one
node and every process follows the same records. (The route walk is the same on any Redis.)"""

from tests.http.test_tokens import (  # noqa: F401
    test_a_prefix_token_reaches_its_accounts_only,
    test_a_revoked_token_is_refused_at_once_and_cannot_be_rotated,
    test_a_rotation_sent_twice_never_cuts_the_first_secrets_grace_short,
    test_a_token_is_shown_once_and_stored_only_as_its_hash,
    test_bootstrap_tokens_keep_working_as_before,
)
