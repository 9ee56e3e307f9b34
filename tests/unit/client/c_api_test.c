/* The C API (client/include/vqkv/vqkv.h), compiled as C99: a store / lookup
 * / load round trip through the embedded store with the fp16 codec (exact
 * for values representable in fp16), salt isolation, hash chains, bad
 * options and NULL arguments, a rotate-half engine's client, and the paged
 * connector (save from one engine's pages, load into another's). Prints one
 * line per failed check; exits 1 if any failed. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vqkv/vqkv.h"

static int failures = 0;

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #cond, vqkv_last_error());                            \
      ++failures;                                                             \
    }                                                                         \
  } while (0)

#define CHECK_CODE(expr, code)                                         \
  do {                                                                 \
    vqkv_status_code got_ = (expr);                                    \
    if (got_ != (code)) {                                              \
      fprintf(stderr, "%s:%d: %s gave %s, want %s (last error: %s)\n", \
              __FILE__, __LINE__, #expr, vqkv_status_code_name(got_),  \
              vqkv_status_code_name(code), vqkv_last_error());         \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

/* The last error message contains `part`. */
#define CHECK_ERROR_MENTIONS(part)                                          \
  do {                                                                      \
    if (strstr(vqkv_last_error(), (part)) == NULL) {                        \
      fprintf(stderr, "%s:%d: last error \"%s\" does not mention \"%s\"\n", \
              __FILE__, __LINE__, vqkv_last_error(), (part));               \
      ++failures;                                                           \
    }                                                                       \
  } while (0)

enum { kLayers = 2, kHeads = 2, kDim = 8, kBlock = 16, kTokens = 40 };
enum { kPerToken = kHeads * kDim };
enum { kElems = kLayers * kTokens * kPerToken };

static void InitOptions(vqkv_client_options_t* o) {
  vqkv_client_options_init(o);
  o->server = "embedded";
  o->codec = "fp16";
  o->model_id = "c-api-test-model";
  o->layers = kLayers;
  o->kv_heads = kHeads;
  o->head_dim = kDim;
  o->block_tokens = kBlock;
}

static vqkv_client_t* OpenClient(void) {
  vqkv_client_options_t o;
  vqkv_client_t* client = NULL;
  InitOptions(&o);
  CHECK_CODE(vqkv_client_create(&o, &client), VQKV_OK);
  CHECK(client != NULL);
  return client;
}

static void TestRoundTrip(void) {
  static float keys[kElems], values[kElems], keys_out[kElems],
      values_out[kElems];
  int32_t tokens[kTokens];
  vqkv_client_t* client = OpenClient();
  vqkv_store_result_t stored;
  vqkv_load_result_t loaded;
  vqkv_stats_t stats;
  int64_t cached = -1, loaded_tokens = -1;
  int i, layer, t;
  if (client == NULL) return;

  for (i = 0; i < kTokens; ++i) tokens[i] = 1000 + 7 * i;
  for (i = 0; i < kElems; ++i) {
    /* Multiples of 1/8 in [-64, 64): exact in fp16. */
    keys[i] = (float)((i * 37) % 1024 - 512) / 8.0f;
    values[i] = (float)((i * 91) % 1024 - 512) / 8.0f;
    keys_out[i] = values_out[i] = -1000.0f;
  }

  CHECK_CODE(vqkv_lookup(client, tokens, kTokens, "", &cached), VQKV_OK);
  CHECK(cached == 0);

  memset(&stored, 0, sizeof(stored));
  stored.struct_size = sizeof(stored);
  CHECK_CODE(vqkv_store(client, tokens, kTokens, "", keys, values, &stored),
             VQKV_OK);
  CHECK(stored.blocks == 2);
  CHECK(stored.stored == 2);
  CHECK(stored.failed == 0);
  CHECK(stored.bytes_sent > 0);
  /* Again: already present. */
  CHECK_CODE(vqkv_store(client, tokens, kTokens, NULL, keys, values, &stored),
             VQKV_OK);
  CHECK(stored.already_present == 2);
  CHECK(stored.stored == 0);

  CHECK_CODE(vqkv_lookup(client, tokens, kTokens, NULL, &cached), VQKV_OK);
  CHECK(cached == 2 * kBlock);

  memset(&loaded, 0, sizeof(loaded));
  loaded.struct_size = sizeof(loaded);
  CHECK_CODE(vqkv_load(client, tokens, kTokens, "", keys_out, values_out,
                       &loaded_tokens, &loaded),
             VQKV_OK);
  CHECK(loaded_tokens == 2 * kBlock);
  CHECK(loaded.tokens == 2 * kBlock);
  CHECK(loaded.blocks == 2);
  for (layer = 0; layer < kLayers; ++layer) {
    for (t = 0; t < kTokens; ++t) {
      const int base = (layer * kTokens + t) * kPerToken;
      for (i = 0; i < kPerToken; ++i) {
        if (t < 2 * kBlock) {
          CHECK(keys_out[base + i] == keys[base + i]);
          CHECK(values_out[base + i] == values[base + i]);
        } else { /* beyond the loaded prefix: untouched */
          CHECK(keys_out[base + i] == -1000.0f);
          CHECK(values_out[base + i] == -1000.0f);
        }
      }
    }
  }

  /* Another salt is another chain: nothing cached, nothing loaded. */
  CHECK_CODE(vqkv_lookup(client, tokens, kTokens, "tenant-b", &cached),
             VQKV_OK);
  CHECK(cached == 0);
  CHECK_CODE(vqkv_load(client, tokens, kTokens, "tenant-b", keys_out,
                       values_out, &loaded_tokens, NULL),
             VQKV_OK);
  CHECK(loaded_tokens == 0);

  memset(&stats, 0, sizeof(stats));
  stats.struct_size = sizeof(stats);
  CHECK_CODE(vqkv_client_stats(client, &stats), VQKV_OK);
  CHECK(stats.blocks_stored == 2);
  CHECK(stats.blocks_loaded == 2);
  CHECK(stats.lookups >= 3);
  CHECK(stats.circuit_open == 0);
  vqkv_client_destroy(client);
}

static void TestHashChain(void) {
  int32_t tokens[kTokens];
  uint8_t a[3 * VQKV_HASH_BYTES], b[3 * VQKV_HASH_BYTES],
      salted[3 * VQKV_HASH_BYTES], ns[VQKV_HASH_BYTES];
  size_t n = 99;
  int i;
  vqkv_client_t* client = OpenClient();
  vqkv_client_t* other = OpenClient();
  if (client == NULL || other == NULL) return;
  for (i = 0; i < kTokens; ++i) tokens[i] = i;

  CHECK(vqkv_client_block_tokens(client) == kBlock);
  CHECK(vqkv_client_block_tokens(NULL) == 0);
  /* Size query. */
  CHECK_CODE(vqkv_hash_chain(client, tokens, kTokens, "", NULL, 0, &n),
             VQKV_OK);
  CHECK(n == 2);
  CHECK_CODE(vqkv_hash_chain(client, tokens, kTokens, "", a, 3, &n), VQKV_OK);
  CHECK(n == 2);
  /* Deterministic across clients of the same namespace. */
  CHECK_CODE(vqkv_hash_chain(other, tokens, kTokens, NULL, b, 3, NULL),
             VQKV_OK);
  CHECK(memcmp(a, b, 2 * VQKV_HASH_BYTES) == 0);
  CHECK(memcmp(a, a + VQKV_HASH_BYTES, VQKV_HASH_BYTES) != 0);
  CHECK_CODE(vqkv_hash_chain(client, tokens, kTokens, "s", salted, 3, NULL),
             VQKV_OK);
  CHECK(memcmp(a, salted, VQKV_HASH_BYTES) != 0);
  /* Too little room: an error, nothing written. */
  memset(b, 0xab, sizeof(b));
  CHECK_CODE(vqkv_hash_chain(client, tokens, kTokens, "", b, 1, &n),
             VQKV_OUT_OF_RANGE);
  CHECK(b[0] == 0xab);
  CHECK_ERROR_MENTIONS("room");
  /* A negative token. */
  tokens[3] = -5;
  CHECK_CODE(vqkv_hash_chain(client, tokens, kTokens, "", a, 3, &n),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("token 3");
  /* The namespace id is 16 bytes, not all zero. */
  memset(ns, 0, sizeof(ns));
  CHECK_CODE(vqkv_client_namespace_id(client, ns), VQKV_OK);
  for (i = 0, n = 0; i < VQKV_HASH_BYTES; ++i) n += ns[i] != 0;
  CHECK(n > 0);
  vqkv_client_destroy(other);
  vqkv_client_destroy(client);
}

static void ExpectCreateError(const vqkv_client_options_t* o,
                              vqkv_status_code code, const char* mention) {
  vqkv_client_t* client = (vqkv_client_t*)&failures; /* must become NULL */
  CHECK_CODE(vqkv_client_create(o, &client), code);
  CHECK(client == NULL);
  CHECK(vqkv_last_error()[0] != '\0');
  CHECK_ERROR_MENTIONS(mention);
}

static void TestBadOptions(void) {
  vqkv_client_options_t o;
  unsigned char bigger[sizeof(vqkv_client_options_t) + 8];
  vqkv_client_t* client = NULL;

  InitOptions(&o);
  o.struct_size = 0;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "struct_size");

  InitOptions(&o);
  o.block_tokens = 17;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "block_tokens");

  InitOptions(&o);
  o.codec = "nope";
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "nope");

  InitOptions(&o);
  o.model_id = NULL;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "model_id");

  InitOptions(&o);
  o.head_dim = 0;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "head_dim");

  InitOptions(&o);
  o.key_pairs = 2;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "key_pairs");

  InitOptions(&o);
  o.codec = "vq"; /* without codebooks */
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "codebook");

  InitOptions(&o);
  o.codebook_path = "/nonexistent/file.vqcb"; /* fp16 takes none */
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "codebooks");

  InitOptions(&o);
  o.codec = "vq";
  o.codebook_path = "/nonexistent/file.vqcb";
  ExpectCreateError(&o, VQKV_NOT_FOUND, "/nonexistent/file.vqcb");

  InitOptions(&o);
  o.kv_dtype = 9;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "kv_dtype");

  InitOptions(&o);
  o.encode_on_cuda = 1;
  o.encode_cuda_device = -1;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "encode_cuda_device");

  /* decode_on_device and encode_on_device default to AUTO and open a
   * client at every valid value (they matter when CUDA pages register:
   * kv_connector_test.cc); other values are refused, naming the field. */
  InitOptions(&o);
  CHECK(o.decode_on_device == VQKV_ON_DEVICE_AUTO);
  CHECK(o.encode_on_device == VQKV_ON_DEVICE_AUTO);
  for (int32_t use = VQKV_ON_DEVICE_OFF; use <= VQKV_ON_DEVICE_AUTO; ++use) {
    o.decode_on_device = use;
    o.encode_on_device = use;
    client = NULL;
    CHECK_CODE(vqkv_client_create(&o, &client), VQKV_OK);
    vqkv_client_destroy(client);
  }
  InitOptions(&o);
  o.decode_on_device = 3;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "decode_on_device");
  InitOptions(&o);
  o.encode_on_device = -1;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "encode_on_device");

  InitOptions(&o);
  o.server = "embedded:";
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "directory");

  InitOptions(&o);
  o.replicas = -1;
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "replicas");

  InitOptions(&o);
  o.server = "127.0.0.1:1,,127.0.0.1:2";
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "empty entry");

  /* TLS settings (tests/integration/tls_test.cc uses them against a real
   * server): checked when the client opens, before anything is dialled. */
  InitOptions(&o);
  o.server = "127.0.0.1:1";
  o.tls_ca_file = "/nonexistent/ca.pem";
  ExpectCreateError(&o, VQKV_NOT_FOUND, "/nonexistent/ca.pem");

  InitOptions(&o); /* a cluster: checked before any member is dialled */
  o.server = "127.0.0.1:1,127.0.0.1:2";
  o.tls_cert_file = "/nonexistent/client.pem";
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "together");

  InitOptions(&o);
  o.tls_ca_file = "/nonexistent/ca.pem"; /* the embedded store has no TLS */
  ExpectCreateError(&o, VQKV_INVALID_ARGUMENT, "embedded");

  /* A cluster of servers that are not there: the client opens (fp16 needs
   * no codebook registration) and a lookup is a miss, not an error. */
  InitOptions(&o);
  o.server = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";
  o.replicas = 2;
  client = NULL;
  CHECK_CODE(vqkv_client_create(&o, &client), VQKV_OK);
  {
    int32_t tokens[2 * 64];
    int64_t cached = -1;
    int i;
    for (i = 0; i < 2 * 64; ++i) tokens[i] = i;
    CHECK_CODE(vqkv_lookup(client, tokens, 2 * 64, "", &cached), VQKV_OK);
    CHECK(cached == 0);
  }
  vqkv_client_destroy(client);

  /* A first-version caller, without the replicas field: the default. */
  InitOptions(&o);
  o.struct_size = offsetof(vqkv_client_options_t, replicas);
  client = NULL;
  CHECK_CODE(vqkv_client_create(&o, &client), VQKV_OK);
  vqkv_client_destroy(client);

  /* Init for a first-version caller writes only its fields: the bytes
   * after its struct (here the rest of a bigger buffer) stay untouched. */
  {
    const size_t v1 = offsetof(vqkv_client_options_t, replicas);
    unsigned char buf[sizeof(vqkv_client_options_t) + 16];
    size_t k;
    memset(buf, 0xAB, sizeof(buf));
    vqkv_client_options_init_sized((vqkv_client_options_t*)buf, v1);
    for (k = v1; k < sizeof(buf); ++k) CHECK(buf[k] == 0xAB);
    CHECK(((vqkv_client_options_t*)buf)->struct_size == v1);
    CHECK(((vqkv_client_options_t*)buf)->block_tokens == 64);
    /* A newer caller's bigger struct: its unknown tail is zeroed. */
    memset(buf, 0xAB, sizeof(buf));
    vqkv_client_options_init_sized((vqkv_client_options_t*)buf,
                                   sizeof(buf) - 8);
    for (k = sizeof(vqkv_client_options_t); k < sizeof(buf) - 8; ++k) {
      CHECK(buf[k] == 0);
    }
    for (k = sizeof(buf) - 8; k < sizeof(buf); ++k) CHECK(buf[k] == 0xAB);
    CHECK(((vqkv_client_options_t*)buf)->struct_size == sizeof(buf) - 8);
    CHECK(((vqkv_client_options_t*)buf)->replicas == 2);
  }

  /* A newer caller's bigger struct: fine while the unknown tail is zero. */
  InitOptions(&o);
  memset(bigger, 0, sizeof(bigger));
  memcpy(bigger, &o, sizeof(o));
  ((vqkv_client_options_t*)bigger)->struct_size = sizeof(bigger);
  CHECK_CODE(vqkv_client_create((vqkv_client_options_t*)bigger, &client),
             VQKV_OK);
  vqkv_client_destroy(client);
  bigger[sizeof(o) + 3] = 1;
  ExpectCreateError((vqkv_client_options_t*)bigger, VQKV_INVALID_ARGUMENT,
                    "does not know");

  /* A good create clears the last error. */
  InitOptions(&o);
  client = NULL;
  CHECK_CODE(vqkv_client_create(&o, &client), VQKV_OK);
  CHECK(strcmp(vqkv_last_error(), "") == 0);
  vqkv_client_destroy(client);
}

static void TestNullArguments(void) {
  vqkv_client_options_t o;
  vqkv_client_t* client = OpenClient();
  vqkv_client_t* unused = (vqkv_client_t*)&failures; /* must become NULL */
  int32_t tokens[kBlock] = {0};
  float kv[kLayers * kBlock * kPerToken] = {0};
  int64_t cached = 0;
  vqkv_stats_t stats;
  vqkv_store_result_t small;
  if (client == NULL) return;

  InitOptions(&o);
  CHECK_CODE(vqkv_client_create(NULL, &unused), VQKV_INVALID_ARGUMENT);
  CHECK(unused == NULL);
  CHECK_ERROR_MENTIONS("options");
  CHECK_CODE(vqkv_client_create(&o, NULL), VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("out");

  CHECK_CODE(vqkv_lookup(NULL, tokens, kBlock, "", &cached),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("client");
  CHECK_CODE(vqkv_lookup(client, NULL, kBlock, "", &cached),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("tokens");
  CHECK_CODE(vqkv_lookup(client, tokens, kBlock, "", NULL),
             VQKV_INVALID_ARGUMENT);
  /* No tokens: NULL is fine. */
  CHECK_CODE(vqkv_lookup(client, NULL, 0, NULL, &cached), VQKV_OK);
  CHECK(cached == 0);

  CHECK_CODE(vqkv_store(client, tokens, kBlock, "", NULL, kv, NULL),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("keys");
  CHECK_CODE(vqkv_store(client, tokens, kBlock, "", kv, NULL, NULL),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("values");
  CHECK_CODE(vqkv_load(client, tokens, kBlock, "", NULL, kv, NULL, NULL),
             VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_load(NULL, tokens, kBlock, "", kv, kv, NULL, NULL),
             VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_store(client, NULL, 0, NULL, NULL, NULL, NULL), VQKV_OK);

  /* Result structs too small to be any version. */
  memset(&small, 0, sizeof(small));
  small.struct_size = 4;
  CHECK_CODE(vqkv_store(client, tokens, kBlock, "", kv, kv, &small),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("struct_size");
  memset(&stats, 0, sizeof(stats));
  CHECK_CODE(vqkv_client_stats(client, &stats), VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_client_stats(client, NULL), VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_client_stats(NULL, &stats), VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_client_namespace_id(client, NULL), VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_hash_chain(NULL, tokens, kBlock, "", NULL, 0, NULL),
             VQKV_INVALID_ARGUMENT);

  vqkv_client_destroy(NULL); /* a no-op */
  vqkv_client_options_init(NULL);
  vqkv_client_destroy(client);
}

static void TestNames(void) {
  CHECK(strcmp(vqkv_status_code_name(VQKV_OK), "OK") == 0);
  CHECK(strcmp(vqkv_status_code_name(VQKV_INVALID_ARGUMENT),
               "INVALID_ARGUMENT") == 0);
  CHECK(strcmp(vqkv_status_code_name(VQKV_UNAUTHENTICATED),
               "UNAUTHENTICATED") == 0);
  CHECK(strcmp(vqkv_status_code_name((vqkv_status_code)77), "UNKNOWN_CODE") ==
        0);
  CHECK(vqkv_version()[0] != '\0');
}

/* Opt-in allocator tuning: glibc takes it (OK); elsewhere, and under a
 * sanitizer's malloc, it says it did nothing (UNIMPLEMENTED) and why. */
static void TestTuneAllocator(void) {
  const vqkv_status_code code = vqkv_tune_allocator();
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
  CHECK(code == VQKV_OK);
  CHECK(vqkv_last_error()[0] == '\0');
#else
  CHECK(code == VQKV_UNIMPLEMENTED);
  CHECK(vqkv_last_error()[0] != '\0');
#endif
}

/* A rotate-half engine's client: the same namespace as an adjacent one
 * (its blocks are shared), and its own keys come back exactly. */
static void TestHalfKeyPairs(void) {
  static float keys[kElems], values[kElems], keys_out[kElems],
      values_out[kElems];
  int32_t tokens[kTokens];
  uint8_t adjacent_ns[VQKV_HASH_BYTES], half_ns[VQKV_HASH_BYTES];
  vqkv_client_options_t o;
  vqkv_client_t* half = NULL;
  vqkv_client_t* adjacent = OpenClient();
  int64_t loaded_tokens = -1;
  int i;
  InitOptions(&o);
  o.key_pairs = VQKV_KEY_PAIRS_HALF;
  CHECK_CODE(vqkv_client_create(&o, &half), VQKV_OK);
  if (half == NULL || adjacent == NULL) {
    vqkv_client_destroy(half);
    vqkv_client_destroy(adjacent);
    return;
  }
  CHECK_CODE(vqkv_client_namespace_id(adjacent, adjacent_ns), VQKV_OK);
  CHECK_CODE(vqkv_client_namespace_id(half, half_ns), VQKV_OK);
  CHECK(memcmp(adjacent_ns, half_ns, VQKV_HASH_BYTES) == 0);

  for (i = 0; i < kTokens; ++i) tokens[i] = 3000 + 11 * i;
  for (i = 0; i < kElems; ++i) {
    keys[i] = (float)((i * 53) % 1024 - 512) / 8.0f; /* exact in fp16 */
    values[i] = (float)((i * 29) % 1024 - 512) / 8.0f;
  }
  CHECK_CODE(vqkv_store(half, tokens, kTokens, "", keys, values, NULL),
             VQKV_OK);
  CHECK_CODE(vqkv_load(half, tokens, kTokens, "", keys_out, values_out,
                       &loaded_tokens, NULL),
             VQKV_OK);
  CHECK(loaded_tokens == 2 * kBlock);
  for (i = 0; i < kLayers * 2 * kBlock * kPerToken; ++i) {
    /* Layer 0's first 2 blocks; layer 1 starts at kTokens rows. */
    const int layer = i / (2 * kBlock * kPerToken);
    const int at = layer * kTokens * kPerToken + i % (2 * kBlock * kPerToken);
    CHECK(keys_out[at] == keys[at]);
    CHECK(values_out[at] == values[at]);
  }
  vqkv_client_destroy(half);
  vqkv_client_destroy(adjacent);
}

/* The paged connector: engine 1 saves a request's KV from its float32 NHD
 * pages, engine 2 (another connector, HND pages) loads its two full blocks
 * into other pages. */
enum { kPages = 4, kPageElems = kPages * kBlock * kPerToken };
static float pages_k1[kLayers][kPageElems], pages_v1[kLayers][kPageElems];
static float pages_k2[kLayers][kPageElems], pages_v2[kLayers][kPageElems];

static void CountRequest(void* context, const char* request_id) {
  (void)request_id;
  ++*(int*)context;
}

static void FillCaches(vqkv_paged_caches_t* c, vqkv_paged_layer_t* layers,
                       float (*k)[kPageElems], float (*v)[kPageElems],
                       int hnd) {
  int l, i;
  /* (block, slot, head, dim) strides in elements. */
  const int64_t nhd[4] = {kBlock * kPerToken, kPerToken, kDim, 1};
  const int64_t hnd_s[4] = {kBlock * kPerToken, kDim, kBlock * kDim, 1};
  memset(c, 0, sizeof(*c));
  c->struct_size = sizeof(*c);
  c->num_blocks = kPages;
  c->block_size = kBlock;
  c->kv_heads = kHeads;
  c->head_dim = kDim;
  c->kv_dtype = VQKV_KV_FLOAT32;
  c->num_layers = kLayers;
  c->layers = layers;
  for (l = 0; l < kLayers; ++l) {
    layers[l].keys = k[l];
    layers[l].values = v[l];
    for (i = 0; i < 4; ++i) {
      layers[l].key_strides[i] = hnd ? hnd_s[i] : nhd[i];
      layers[l].value_strides[i] = hnd ? hnd_s[i] : nhd[i];
    }
  }
}

/* Offset of (page, slot, head, dim) in a layer's pages. */
static int PageAt(int hnd, int page, int slot, int head, int dim) {
  return hnd ? ((page * kHeads + head) * kBlock + slot) * kDim + dim
             : ((page * kBlock + slot) * kHeads + head) * kDim + dim;
}

static void TestConnector(void) {
  const int32_t ids1[3] = {2, 0, 3}, ids2[2] = {3, 1};
  int32_t tokens[kTokens];
  vqkv_client_t* client = OpenClient();
  vqkv_connector_t *engine1 = NULL, *engine2 = NULL;
  vqkv_paged_layer_t layers1[kLayers], layers2[kLayers];
  vqkv_paged_caches_t caches1, caches2;
  vqkv_save_spec_t save;
  vqkv_load_spec_t load;
  int saved = 0, loaded = 0, l, t, h, d;
  int32_t failed[4];
  size_t count = 99, pending = 99;
  int64_t cached = -1;
  clock_t start;
  if (client == NULL) return;
  for (t = 0; t < kTokens; ++t) tokens[t] = 5000 + 3 * t;
  for (l = 0; l < kLayers; ++l) {
    for (t = 0; t < kTokens; ++t) {
      for (h = 0; h < kHeads; ++h) {
        for (d = 0; d < kDim; ++d) {
          const int at = PageAt(0, ids1[t / kBlock], t % kBlock, h, d);
          pages_k1[l][at] = (float)((l * 31 + t * 7 + h * 3 + d) % 97) / 8.0f;
          pages_v1[l][at] = (float)((l * 13 + t * 5 + h + d * 11) % 89) / 8.0f;
        }
      }
    }
  }
  CHECK_CODE(vqkv_connector_create(client, &engine1), VQKV_OK);
  CHECK_CODE(vqkv_connector_create(client, &engine2), VQKV_OK);
  if (engine1 == NULL || engine2 == NULL) {
    vqkv_connector_destroy(engine1);
    vqkv_connector_destroy(engine2);
    vqkv_client_destroy(client);
    return;
  }
  FillCaches(&caches1, layers1, pages_k1, pages_v1, 0);
  FillCaches(&caches2, layers2, pages_k2, pages_v2, 1);

  /* Loading before the pages are registered is a misuse. */
  memset(&load, 0, sizeof(load));
  load.request_id = "r2";
  load.tokens = tokens;
  load.num_tokens = kTokens;
  load.block_ids = ids2;
  load.num_block_ids = 2;
  load.load_tokens = 2 * kBlock;
  CHECK_CODE(vqkv_connector_start_load(engine2, &load, 1),
             VQKV_FAILED_PRECONDITION);
  caches1.kv_dtype = 9;
  CHECK_CODE(vqkv_connector_register_kv_caches(engine1, &caches1),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("kv_dtype");
  caches1.kv_dtype = VQKV_KV_FLOAT32;
  caches1.device = 7;
  CHECK_CODE(vqkv_connector_register_kv_caches(engine1, &caches1),
             VQKV_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("device");
  /* Host arrays passed as CUDA pages: no CUDA in the build, no GPU, or not
   * device memory; never accepted. */
  caches1.device = VQKV_DEVICE_CUDA;
  {
    const vqkv_status_code code =
        vqkv_connector_register_kv_caches(engine1, &caches1);
    CHECK(code == VQKV_UNIMPLEMENTED || code == VQKV_FAILED_PRECONDITION);
  }
  /* An old caller's struct, which ends before `device`: host pages. */
  caches1.struct_size = offsetof(vqkv_paged_caches_t, device);
  CHECK_CODE(vqkv_connector_register_kv_caches(engine1, &caches1), VQKV_OK);
  CHECK_CODE(vqkv_connector_register_kv_caches(engine2, &caches2), VQKV_OK);
  {
    /* Host pages: neither path is on a device. */
    int32_t decode = -1, encode = -1;
    CHECK_CODE(vqkv_connector_device_paths(engine1, &decode, &encode), VQKV_OK);
    CHECK(decode == 0 && encode == 0);
    CHECK_CODE(vqkv_connector_device_paths(engine1, NULL, NULL), VQKV_OK);
    CHECK_CODE(vqkv_connector_device_paths(NULL, &decode, &encode),
               VQKV_INVALID_ARGUMENT);
  }

  memset(&save, 0, sizeof(save));
  save.request_id = "r1";
  save.tokens = tokens;
  save.num_tokens = kTokens;
  save.block_ids = ids1;
  save.num_block_ids = 3;
  for (l = 0; l < kLayers; ++l) {
    CHECK_CODE(vqkv_connector_save_layer(engine1, l, &save, 1), VQKV_OK);
  }
  CHECK_CODE(vqkv_connector_wait_for_save(engine1), VQKV_OK);
  /* The save goes on in the background; wait (at most 10 s) for it. */
  start = clock();
  while (saved == 0 && clock() - start < 10 * CLOCKS_PER_SEC) {
    CHECK_CODE(vqkv_connector_get_finished(engine1, CountRequest, NULL, &saved),
               VQKV_OK);
  }
  CHECK(saved == 1);
  CHECK_CODE(vqkv_lookup(client, tokens, kTokens, NULL, &cached), VQKV_OK);
  CHECK(cached == 2 * kBlock);

  CHECK_CODE(vqkv_connector_start_load(engine2, &load, 1), VQKV_OK);
  for (l = 0; l < kLayers; ++l) {
    CHECK_CODE(vqkv_connector_wait_for_layer_load(engine2, l), VQKV_OK);
  }
  CHECK_CODE(vqkv_connector_get_finished(engine2, NULL, CountRequest, &loaded),
             VQKV_OK);
  CHECK(loaded == 1);
  CHECK_CODE(vqkv_connector_take_load_error_block_ids(engine2, failed, 4,
                                                      &count, &pending),
             VQKV_OK);
  CHECK(count == 0 && pending == 0);
  for (l = 0; l < kLayers; ++l) {
    for (t = 0; t < 2 * kBlock; ++t) {
      for (h = 0; h < kHeads; ++h) {
        for (d = 0; d < kDim; ++d) {
          const int from = PageAt(0, ids1[t / kBlock], t % kBlock, h, d);
          const int to = PageAt(1, ids2[t / kBlock], t % kBlock, h, d);
          CHECK(pages_k2[l][to] == pages_k1[l][from]);
          CHECK(pages_v2[l][to] == pages_v1[l][from]);
        }
      }
    }
  }
  CHECK_CODE(vqkv_connector_cancel(engine1, NULL), VQKV_INVALID_ARGUMENT);
  CHECK_CODE(vqkv_connector_shutdown(engine1, 1000), VQKV_OK);
  vqkv_connector_destroy(engine1);
  vqkv_connector_destroy(engine2);
  vqkv_client_destroy(client);
}

int main(void) {
  TestNames();
  TestTuneAllocator();
  TestRoundTrip();
  TestHashChain();
  TestBadOptions();
  TestHalfKeyPairs();
  TestConnector();
  TestNullArguments();
  if (failures != 0) {
    fprintf(stderr, "c_api_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed (vqkv %s)\n", vqkv_version());
  return 0;
}
