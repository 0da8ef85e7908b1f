"""The library: everything a user made (edits, series scenes, session turns), with favourites, removal and
share links; a share link is a public, unguessable, revocable URL that shows one result and only what its
owner chose."""

from kontext_studio.service.library.library_sql import LibraryItem, SharedView, ShareRecord, SqlLibrary

__all__ = ["LibraryItem", "ShareRecord", "SharedView", "SqlLibrary"]
