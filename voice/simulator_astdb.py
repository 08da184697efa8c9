"""The AMI simulator's AstDB: Asterisk's little key/value store and its AMI actions.

The shipped dialplan writes each call's result there (`Set(DB(plp/${PLP_CALL})=...)`); the
gateway reads it back with `DBGet` after a restart. Answers have the shapes of Asterisk 22's
main/db.c (`manager_dbget`, `manager_dbput`, `manager_dbdel`, `manager_dbdeltree`).
Like the real one (an SQLite file) it outlives calls, AMI sessions and `restart()`.
"""

from __future__ import annotations

from collections.abc import Callable

Lines = list[tuple[str, str]]


class AstDB:
    """Family/key -> value, as `database show` would list it."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], str] = {}

    def get(self, family: str, key: str) -> str | None:
        return self._data.get((family, key))

    def put(self, family: str, key: str, value: str) -> None:
        self._data[(family, key)] = value

    def delete(self, family: str, key: str) -> bool:
        return self._data.pop((family, key), None) is not None

    def delete_tree(self, family: str, key: str = "") -> int:
        """Delete `family` (or its `key` and the keys below it, `key/...`); how many."""
        doomed = [
            k
            for k in self._data
            if k[0] == family and (not key or k[1] == key or k[1].startswith(key + "/"))
        ]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def family(self, family: str) -> dict[str, str]:
        return {k: v for (f, k), v in self._data.items() if f == family}


def db_action(
    db: AstDB, action: str, headers: dict[str, str], send: Callable[[Lines], None]
) -> bool:
    """Answer one of DBGet/DBPut/DBDel/DBDelTree like Asterisk; False if `action` is not one.

    `headers` are the action's headers with lower-case names.
    """
    if action not in ("dbget", "dbput", "dbdel", "dbdeltree"):
        return False
    aid = headers.get("actionid")
    head: Lines = [("ActionID", aid)] if aid else []
    family, key = headers.get("family", ""), headers.get("key", "")

    def answer(response: str, message: str, *extra: tuple[str, str]) -> None:
        send([("Response", response), *head, *extra, ("Message", message)])

    if not family:
        answer("Error", "No family specified.")
        return True
    if action == "dbdeltree":
        removed = db.delete_tree(family, key)
        if removed:
            answer("Success", "Key tree deleted successfully")
        else:
            answer("Error", "Database entry not found")
        return True
    if not key:
        answer("Error", "No key specified.")
        return True
    if action == "dbput":
        db.put(family, key, headers.get("val", ""))
        answer("Success", "Updated database successfully")
    elif action == "dbdel":
        if db.delete(family, key):
            answer("Success", "Key deleted successfully")
        else:
            answer("Error", "Database entry not found")
    else:
        value = db.get(family, key)
        if value is None:
            answer("Error", "Database entry not found")
            return True
        # astman_send_listack, the entry, then astman_send_list_complete_start/_end.
        answer("Success", "Result will follow", ("EventList", "start"))
        send([("Event", "DBGetResponse"), ("Family", family), ("Key", key), ("Val", value), *head])
        send([("Event", "DBGetComplete"), *head, ("EventList", "Complete"), ("ListItems", "1")])
    return True
