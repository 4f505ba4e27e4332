"""The official openai Python SDK against ibrain, unmodified: sync and async clients,
streaming and not, chat and completions, and the server's errors as the SDK's typed errors.

usage: python openai_sdk.py BASE_URL MODEL  (the python of the venv tools/setup.sh makes)
"""
import asyncio
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]


def check_sync():
    client = openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=20)
    assert [m.id for m in client.models.list().data] == [model]

    chat = client.chat.completions.create(
        model=model, max_tokens=6,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}])
    assert chat.object == "chat.completion", chat
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 6, chat.usage
    assert chat.choices[0].message.content

    text, chunks, usage, finish = "", 0, None, None
    stream = client.chat.completions.create(
        model=model, max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Stream, please."}]}])
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            chunks += 1
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert chunks == 8 and finish == "length" and usage.completion_tokens == 8, (chunks, finish, usage)
    assert len(text) == 32, text

    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=3)
    assert comp.object == "text_completion" and comp.usage.completion_tokens == 3, comp
    n = sum(len(chunk.choices) for chunk in client.completions.create(
        model=model, prompt="Stream text", max_tokens=4, stream=True))
    assert n == 4, n

    # The server's errors surface as the SDK's typed errors, with its message, code and param.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error for an unknown model")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found" and "does not exist" in e.message, e
    try:
        client.chat.completions.create(model=model, messages=[])
        raise AssertionError("no error for empty messages")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "messages", e
    return text


async def check_async():
    client = openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=20)
    chat = await client.chat.completions.create(
        model=model, max_tokens=5, messages=[{"role": "user", "content": "Hello, async?"}])
    assert chat.usage.completion_tokens == 5, chat.usage

    async def one_stream(i):
        stream = await client.chat.completions.create(
            model=model, max_tokens=6, stream=True, messages=[{"role": "user", "content": "stream %d" % i}])
        n = 0
        async for chunk in stream:
            n += len(chunk.choices)
        return n

    counts = await asyncio.gather(*(one_stream(i) for i in range(8)))  # concurrent streams
    assert counts == [6] * 8, counts
    await client.close()


text = check_sync()
asyncio.run(check_async())
print('openai Python SDK %s: ok (sync and async; streamed "%s")' % (openai.__version__, text.strip()))
