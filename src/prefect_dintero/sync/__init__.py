"""Sync: one stream of one account into the sink, incrementally.

``options`` is what a run is asked for (``SyncRequest``), ``cursor`` the cursor arithmetic of
a window (``WindowCursor``), ``window_reader`` reads a window (one slice, or concurrent slices
on a backfill) and commits each page with where it stands, and ``stream_sync`` runs a stream:
its window, its late-change reads, its snapshots.
"""
