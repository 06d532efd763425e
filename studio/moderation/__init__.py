"""Safety checks: a moderator scores content, the policy turns scores into verdicts."""
