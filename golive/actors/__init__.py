"""golive's actors: the directory, rooms, fanouts and subscribers (and later recorders).

Actors own every piece of room state and every decision; they talk in the typed, immutable
messages of :mod:`golive.actors.messages`, and reach the event loop only through a
:class:`golive.actors.ports.LoopPort`.
"""
