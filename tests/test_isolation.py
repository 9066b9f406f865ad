"""Each call gets its own copy of its arguments; what cannot be copied is passed as it is."""

import asyncio
import collections
import dataclasses
import threading
from typing import Any, NamedTuple

import pydantic
import pytest

import shoal
from shoal import Plan, tool
from tests.conftest import arun


@tool
async def produce(value: Any) -> Any:
    return value


@tool
async def mutate(data: Any, tag: str) -> Any:
    await asyncio.sleep(0.01)  # both consumers hold their copy at the same time
    data["items"].append(tag)
    data["items"][0]["seen_by"] = tag
    data[tag] = True
    return data


@tool
def mutate_sync(data: Any, tag: str) -> Any:
    data["items"].append(tag)
    data["items"][0]["seen_by"] = tag
    data[tag] = True
    return data


def fresh() -> dict[str, Any]:
    return {"items": [{"seen_by": None}]}


@pytest.mark.parametrize("consumer", [mutate, mutate_sync], ids=["async", "sync"])
def test_consumers_of_one_output_get_their_own_copies(consumer: Any) -> None:
    plan = Plan()
    up = plan.call(produce, value=fresh())
    one = plan.call(consumer, data=up, tag="one")
    two = plan.call(consumer, data=up, tag="two")
    result = shoal.run_sync(plan)
    assert result[one].value == {"items": [{"seen_by": "one"}, "one"], "one": True}
    assert result[two].value == {"items": [{"seen_by": "two"}, "two"], "two": True}
    assert result[up].value == fresh()  # the recorded output is untouched


def test_a_field_of_an_output_is_copied_too() -> None:
    @tool
    async def append(items: list[Any]) -> list[Any]:
        items.append("x")
        return items

    plan = Plan()
    up = plan.call(produce, value={"items": [1], "other": 2})
    a = plan.call(append, items=up["items"])
    b = plan.call(append, items=up["items"])
    result = shoal.run_sync(plan)
    assert result[a].value == result[b].value == [1, "x"]
    assert result[up].value == {"items": [1], "other": 2}


def test_literal_arguments_are_copied_per_call() -> None:
    shared = {"items": [{"seen_by": None}]}
    plan = Plan()
    one = plan.call(mutate, data=shared, tag="one")
    two = plan.call(mutate, data=shared, tag="two")
    result = shoal.run_sync(plan)
    assert "two" not in result[one].value and "one" not in result[two].value
    assert shared == fresh()
    assert plan.node(one).args["data"] is shared  # the plan still holds the caller's object


def test_a_retry_sees_the_original_arguments() -> None:
    seen: list[Any] = []

    @tool(retries=2, backoff=0.001)
    async def greedy(data: Any, items: list[int]) -> str:
        seen.append((repr(data), list(items)))
        data["items"].append("mutated")
        items.append(99)
        if len(seen) < 3:
            raise RuntimeError("again")
        return "done"

    plan = Plan()
    up = plan.call(produce, value=fresh())
    ref = plan.call(greedy, data=up, items=[1, 2])
    result = shoal.run_sync(plan)
    assert result[ref].attempts == 3
    assert seen == [(repr(fresh()), [1, 2])] * 3
    assert result[up].value == fresh()


def test_uncopyable_objects_are_passed_as_they_are() -> None:
    lock = threading.Lock()

    class Client:
        def __init__(self) -> None:
            self.calls = 0

    client = Client()
    got: list[Any] = []

    @tool
    async def use(lock: Any, client: Any, tag: str) -> str:
        got.append((lock, client))
        with lock:
            client.calls += 1
        return tag

    plan = Plan()
    up = plan.call(produce, value=lock)
    plan.call(use, lock=up, client=client, tag="a")
    plan.call(use, lock=lock, client=client, tag="b")
    result = shoal.run_sync(plan)
    assert result.ok
    assert all(item[0] is lock and item[1] is client for item in got)
    assert client.calls == 2


def test_dataclasses_and_models_are_copied() -> None:
    @dataclasses.dataclass
    class Note:
        tags: list[str]

    class Doc(pydantic.BaseModel):
        tags: list[str]

    @tool
    async def tag(note: Any, doc: Any, label: str) -> tuple[list[str], list[str]]:
        note.tags.append(label)
        doc.tags.append(label)
        return note.tags, doc.tags

    plan = Plan()
    note = plan.call(produce, value=Note(["n"]))
    doc = plan.call(produce, value=Doc(tags=["d"]))
    a = plan.call(tag, note=note, doc=doc, label="a")
    b = plan.call(tag, note=note, doc=doc, label="b")
    result = shoal.run_sync(plan)
    assert result[a].value == (["n", "a"], ["d", "a"])
    assert result[b].value == (["n", "b"], ["d", "b"])
    assert result[note].value == Note(["n"])
    assert result[doc].value == Doc(tags=["d"])


def test_sets_tuples_and_bytearrays_are_private() -> None:
    @tool
    async def grow(s: Any, b: Any, t: Any) -> int:
        s.add("new")
        b.extend(b"!")
        t[0].append("x")
        return len(s)

    plan = Plan()
    up = plan.call(produce, value={"s": {"a"}, "b": bytearray(b"hi"), "t": ([],)})
    plan.call(grow, s=up["s"], b=up["b"], t=up["t"])
    plan.call(grow, s=up["s"], b=up["b"], t=up["t"])
    result = shoal.run_sync(plan)
    assert result.ok
    assert result[up].value == {"s": {"a"}, "b": bytearray(b"hi"), "t": ([],)}


def test_refs_inside_sets_resolve() -> None:
    plan = Plan()
    a = plan.call(produce, value="x")
    b = plan.call(produce, value="y")
    s = plan.call(produce, value={a, b})
    f = plan.call(produce, value=frozenset([a]))
    result = shoal.run_sync(plan)
    assert result[s].value == {"x", "y"}
    assert result[f].value == frozenset({"x"})


# ---- bugs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: collections.defaultdict(list, {"items": [{"seen_by": None}]}),
    lambda: collections.OrderedDict(items=[{"seen_by": None}]),
], ids=["defaultdict", "OrderedDict"])
def test_dict_subclasses_are_copied_too(make: Any) -> None:
    plan = Plan()
    up = plan.call(produce, value=make())
    one = plan.call(mutate, data=up, tag="one")
    two = plan.call(mutate, data=up, tag="two")
    result = shoal.run_sync(plan)
    assert "two" not in result[one].value
    assert "one" not in result[two].value
    assert dict(result[up].value) == fresh()


def test_a_dataclass_holding_an_uncopyable_object_is_still_passed() -> None:
    @dataclasses.dataclass
    class Settings:
        lock: Any
        retries: int = 3

    @tool
    async def use(settings: Any) -> int:
        with settings.lock:
            return int(settings.retries)

    plan = Plan()
    ref = plan.call(use, settings=Settings(threading.Lock()))
    result = shoal.run_sync(plan)
    assert result[ref].status == "ok", result[ref].error


class Pair(NamedTuple):
    left: Any
    right: Any


@pytest.mark.parametrize("wrap", [
    lambda r: Pair(r, 2),
    lambda r: collections.OrderedDict(key=r),
], ids=["namedtuple", "OrderedDict"])
def test_refs_inside_container_subclasses_resolve(wrap: Any) -> None:
    plan = Plan()
    a = plan.call(produce, value="resolved")
    b = plan.call(produce, value=wrap(a))
    result = shoal.run_sync(plan)
    value = result[b].value
    inner = value.left if isinstance(value, Pair) else value["key"]
    assert inner == "resolved"


@dataclasses.dataclass
class CopyRefuser:
    x: int

    def __deepcopy__(self, memo: Any) -> "CopyRefuser":
        raise RuntimeError("this object refuses to be copied")


@pytest.mark.usefixtures("collect_garbage")
def test_an_output_that_cannot_be_copied_fails_its_consumer_without_hanging() -> None:
    @tool
    async def make() -> Any:
        return CopyRefuser(1)

    plan = Plan()
    up = plan.call(make)
    ref = plan.call(produce, value=up)
    result = arun(shoal.run(plan), timeout=1.0, check_tasks=False, virtual=True)
    assert result[up].status == "ok"
    assert result[ref].status == "failed"


def test_a_literal_that_cannot_be_copied_fails_only_its_node() -> None:
    plan = Plan()
    bad = plan.call(produce, value=CopyRefuser(1))
    good = plan.call(produce, value="fine")
    result = shoal.run_sync(plan)
    assert result[good].status == "ok"
    assert result[bad].status == "failed"
