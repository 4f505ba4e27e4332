// The official openai npm SDK against an ibrain-compatible server, unmodified.
// usage: node openai_sdk.cjs SDK_DIR BASE_URL MODEL
const assert = require('node:assert/strict');
const { OpenAI } = require(process.argv[2]);
const [baseURL, model] = process.argv.slice(3);

async function main() {
  const client = new OpenAI({ apiKey: 'unused', baseURL, maxRetries: 0, timeout: 20000 });

  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [model]);

  const chat = await client.chat.completions.create({
    model, max_tokens: 6, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello?' }],
  });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(chat.usage.completion_tokens, 6);
  assert.ok(chat.choices[0].message.content.length > 0);

  const stream = await client.chat.completions.create({
    model, max_tokens: 8, stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Stream, please.' }] }],
  });
  let text = '', chunks = 0, usage = null, finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      chunks++;
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(chunks, 8);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 8);
  assert.equal(text.length, 32);

  const comp = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 3 });
  assert.equal(comp.object, 'text_completion');
  assert.equal(comp.usage.completion_tokens, 3);

  const cstream = await client.completions.create({ model, prompt: 'Stream text', max_tokens: 4, stream: true });
  let n = 0;
  for await (const chunk of cstream) n += chunk.choices.length;
  assert.equal(n, 4);

  // An error from the server surfaces as the SDK's typed error with the server's message.
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (err) => err.status === 404 && err.code === 'model_not_found' && /does not exist/.test(err.message));
  await assert.rejects(
    client.chat.completions.create({ model, messages: [] }),
    (err) => err.status === 400 && err.param === 'messages');
  console.log(`openai SDK: ok (streamed "${text.trim()}")`);
}

main().catch((err) => { console.error(err); process.exit(1); });
