"""Settings an administrator changes from the studio instead of the server's environment."""

from kontext_studio.service.admin.settings_sql import BFL_KEY, SettingsUnavailable, SqlServerSettings, install_bfl_key

__all__ = ["BFL_KEY", "SettingsUnavailable", "SqlServerSettings", "install_bfl_key"]
