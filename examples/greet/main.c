/*
 * greet: an edgesync function in C, built for wasm32-wasi (WASI preview 1).
 *
 * Follows the gateway's WAGI/CGI-style contract: the request body arrives on stdin,
 * the request line and headers in the environment (REQUEST_METHOD, PATH_INFO,
 * QUERY_STRING, CONTENT_TYPE, CONTENT_LENGTH, HTTP_*), and what it writes to stdout
 * is the response body. It answers with a JSON object:
 *
 *   {"greeting": "hello, <body>", "method": "POST", "path": "/functions/greet",
 *    "query": "a=1", "content_type": "text/plain", "content_length": "5",
 *    "body_bytes": 5, "headers": {"HTTP_X_TRACE": "abc"}, "argv": ["greet"]}
 *
 * An empty body greets "world". Variables that are not set are null. Exit status 0;
 * 1 when the body cannot be read or is larger than MAX_BODY.
 *
 * Build: build/build_examples.sh (clang --target=wasm32-wasi -O2 ...).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (1u << 20)

extern char **environ;

/* Writes s as a JSON string literal (UTF-8 passes through; control bytes escaped). */
static void json_string(const char *s, size_t len) {
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (c < 0x20)
                printf("\\u%04x", c);
            else
                putchar(c);
        }
    }
    putchar('"');
}

static void json_env(const char *key) {
    const char *value = getenv(key);
    if (value)
        json_string(value, strlen(value));
    else
        fputs("null", stdout);
}

/* Reads all of stdin into a malloc'd buffer; returns NULL on error or overflow. */
static char *read_body(size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            if (cap >= MAX_BODY)
                break;
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                break;
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin))
                break;
            *len = n;
            return buf;
        }
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    size_t len = 0;
    char *body = read_body(&len);
    if (!body) {
        fputs("greet: cannot read the request body\n", stderr);
        return 1;
    }
    size_t name_len = len;
    while (name_len > 0 && isspace((unsigned char)body[name_len - 1]))
        name_len--;

    static const char prefix[] = "hello, ";
    const char *name = name_len ? body : "world";
    if (!name_len)
        name_len = strlen(name);
    char *greeting = malloc(sizeof prefix - 1 + name_len);
    if (!greeting) {
        fputs("greet: out of memory\n", stderr);
        return 1;
    }
    memcpy(greeting, prefix, sizeof prefix - 1);
    memcpy(greeting + sizeof prefix - 1, name, name_len);

    fputs("{\"greeting\": ", stdout);
    json_string(greeting, sizeof prefix - 1 + name_len);
    fputs(", \"method\": ", stdout);
    json_env("REQUEST_METHOD");
    fputs(", \"path\": ", stdout);
    json_env("PATH_INFO");
    fputs(", \"query\": ", stdout);
    json_env("QUERY_STRING");
    fputs(", \"content_type\": ", stdout);
    json_env("CONTENT_TYPE");
    fputs(", \"content_length\": ", stdout);
    json_env("CONTENT_LENGTH");
    printf(", \"body_bytes\": %zu, \"headers\": {", len);
    /* Every HTTP_* variable: the request headers, CGI-style. */
    int first = 1;
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "HTTP_", 5) != 0 || !eq)
            continue;
        if (!first)
            fputs(", ", stdout);
        first = 0;
        json_string(*e, (size_t)(eq - *e));
        fputs(": ", stdout);
        json_string(eq + 1, strlen(eq + 1));
    }
    fputs("}, \"argv\": [", stdout);
    for (int i = 0; i < argc; i++) {
        if (i)
            fputs(", ", stdout);
        json_string(argv[i], strlen(argv[i]));
    }
    fputs("]}\n", stdout);
    free(greeting);
    free(body);
    return fflush(stdout) == 0 ? 0 : 1;
}
