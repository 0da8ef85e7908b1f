"""HTTP routes: predictions (Replicate envelope), BFL shim, models, files, account."""
