"""Rate limits per user, per client and per IP (README "CORS and rate limits")."""
