/*
 * OpenAI-style error bodies:
 *   {"error":{"message":"...","type":"invalid_request_error","param":"model","code":"model_not_found"}}
 */
#ifndef IBRAIN_OAI_ERROR_H
#define IBRAIN_OAI_ERROR_H

#include <stddef.h>
#include "ibrain/buf.h"
#include "ibrain/json_write.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Appends an OpenAI error object to <b>. <param> and <code> may be NULL (rendered as null).
 * <type> is e.g. "invalid_request_error", "not_found_error", "server_error". Out of memory aborts (buf.h).
 */
void ib_oai_error_json(ib_buf_t *b, const char *message, const char *type, const char *param, const char *code);

#ifdef __cplusplus
}
#endif
#endif
