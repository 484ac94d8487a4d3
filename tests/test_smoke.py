from sync.engine import Engine
from sync.store import Reader
from tests.fake_upstream import FakeRegistry


async def test_full(engine: Engine, reader: Reader, fake: FakeRegistry) -> None:
    result = await engine.run("official")
    print(result.summary())
    assert result.outcome == "ok", result.error
    items = [x async for x in reader.export("default")]
    assert len(items) == 2628
