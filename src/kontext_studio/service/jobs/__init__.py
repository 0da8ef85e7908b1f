"""The job lifecycle: submit (with a credit hold), claim with a lease, progress, fenced completion."""
