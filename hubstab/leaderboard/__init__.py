"""The hubstab leaderboard: a Gradio app over results files (``hubstab leaderboard``, or the hub Space).

Modules: ``app`` (the Gradio app), ``reading`` (load, validate, select, rank), ``columns`` (table columns and
their descriptions), ``fitting`` (eps = a sqrt(R_f), Spearman), ``plots`` (Altair charts), ``submit`` (pull
requests and evaluation requests through the hub), ``about`` (texts). None of them imports torch; the hub
Space folder ``leaderboard/`` is a copy of them made by ``scripts/sync_space.py``.
"""
