"""The on-disk format in one place: ``format`` (names, member keys, encoding: the facts), ``manifest``,
``lock`` (the writer locks), ``writer``, ``tarshards`` (reading shards back, checked), ``verify``, ``card``, ``hub``."""
