"""Content credentials: signing outputs with C2PA manifests, and reading any image's provenance.

Nothing heavy is imported here; the C2PA library loads when a manifest is signed or read.
"""

from kontext_studio.core.provenance.credentials import (
    ContentCredentials,
    CredentialConfig,
    CredentialsError,
    check_signing_chain,
    current_content_credentials,
    provide_content_credentials,
    use_content_credentials,
)
from kontext_studio.core.provenance.signing import (
    ContentClaim,
    Ingredient,
    SignedOutput,
    sign_file,
    sign_output,
    sign_tool_output,
)

__all__ = [
    "ContentClaim",
    "ContentCredentials",
    "CredentialConfig",
    "CredentialsError",
    "Ingredient",
    "SignedOutput",
    "check_signing_chain",
    "current_content_credentials",
    "provide_content_credentials",
    "sign_file",
    "sign_output",
    "sign_tool_output",
    "use_content_credentials",
]
