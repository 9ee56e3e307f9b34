/* vqkv.h: the C API of the vqkv client library (libvqkv_client), the stable
 * ABI for serving engines and language bindings. C99; usable from C++.
 *
 * A vqkv_client_t names the blocks of a token stream by their chain hash,
 * asks a cache (a vqkv-server, or a store embedded in the process) how long
 * a prefix it holds, and stores / loads the KV of those blocks, encoded with
 * a vqkv codec. It wraps vqkv::client::CacheClient (client/cache_client.h),
 * whose contract holds here too: only configuration faults are errors; an
 * unreachable, slow, full or corrupt cache is a miss or a dropped save,
 * counted in the stats.
 *
 * Tensor layout of store / load: float32 keys and values, each contiguous
 * [layer][token][kv_head][head_dim] over num_tokens tokens. Only full blocks
 * of block_tokens tokens are stored or loaded.
 *
 * Errors: every function that can fail returns a vqkv_status_code, whose
 * values equal absl::StatusCode and grpc::StatusCode. vqkv_last_error()
 * gives the message of the last call made on the calling thread. No C++
 * exception crosses this API: an unexpected one is VQKV_INTERNAL (or
 * VQKV_RESOURCE_EXHAUSTED when memory ran out).
 *
 * ABI growth: every struct passed in or out begins with `size_t struct_size`,
 * which the caller sets to sizeof the struct it was compiled with (the
 * *_init functions do it). The library reads or writes only that many bytes,
 * so a program built against an older vqkv.h keeps working with a newer
 * library; a struct_size smaller than the first version's is
 * VQKV_INVALID_ARGUMENT, and one larger than this library knows is accepted
 * only when the unknown trailing bytes are zero.
 *
 * Thread safety: every function may be called concurrently, on the same
 * client too, except vqkv_client_destroy, which must not overlap any other
 * call on the same client.
 */
#ifndef VQKV_VQKV_H_
#define VQKV_VQKV_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(VQKV_BUILDING_LIBRARY)
#define VQKV_EXPORT __declspec(dllexport)
#elif defined(_WIN32)
#define VQKV_EXPORT __declspec(dllimport)
#elif defined(__GNUC__)
#define VQKV_EXPORT __attribute__((visibility("default")))
#else
#define VQKV_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Numerically equal to absl::StatusCode and grpc::StatusCode. */
typedef enum vqkv_status_code {
  VQKV_OK = 0,
  VQKV_CANCELLED = 1,
  VQKV_UNKNOWN = 2,
  VQKV_INVALID_ARGUMENT = 3,
  VQKV_DEADLINE_EXCEEDED = 4,
  VQKV_NOT_FOUND = 5,
  VQKV_ALREADY_EXISTS = 6,
  VQKV_PERMISSION_DENIED = 7,
  VQKV_RESOURCE_EXHAUSTED = 8,
  VQKV_FAILED_PRECONDITION = 9,
  VQKV_ABORTED = 10,
  VQKV_OUT_OF_RANGE = 11,
  VQKV_UNIMPLEMENTED = 12,
  VQKV_INTERNAL = 13,
  VQKV_UNAVAILABLE = 14,
  VQKV_DATA_LOSS = 15,
  VQKV_UNAUTHENTICATED = 16
} vqkv_status_code;

/* Element types of an engine's KV cache (values of vqkv.v1.DType). */
typedef enum vqkv_kv_dtype {
  VQKV_KV_FLOAT16 = 1,
  VQKV_KV_BFLOAT16 = 2,
  VQKV_KV_FLOAT32 = 3
} vqkv_kv_dtype;

/* How an engine's key head dimensions pair under RoPE (docs/CLIENT.md "Key
 * position"). */
typedef enum vqkv_key_pairs {
  /* (2i, 2i+1): GGUF / llama.cpp, and vqkv's own model runtime. */
  VQKV_KEY_PAIRS_ADJACENT = 0,
  /* (i, i + rot/2), "rotate half": Hugging Face checkpoints in vLLM or
   * SGLang ("neox-style" rotary). */
  VQKV_KEY_PAIRS_HALF = 1
} vqkv_key_pairs;

/* Where a codec path runs when the KV caches are CUDA device pages
 * (vqkv_client_options_t decode_on_device, encode_on_device). */
typedef enum vqkv_on_device {
  /* On the host. */
  VQKV_ON_DEVICE_OFF = 0,
  /* On the GPU; registering the pages fails where it cannot. */
  VQKV_ON_DEVICE_ON = 1,
  /* On the GPU where the codec and the GPU allow it, else on the host
   * (the default). */
  VQKV_ON_DEVICE_AUTO = 2
} vqkv_on_device;

/* Bytes of one block hash. */
#define VQKV_HASH_BYTES 16

/* The message of the last call on this thread that returned an error ("" if
 * that call succeeded). Valid until the next vqkv call on this thread. Never
 * NULL. */
VQKV_EXPORT const char* vqkv_last_error(void);

/* "OK", "INVALID_ARGUMENT", ... ("UNKNOWN_CODE" for other values). */
VQKV_EXPORT const char* vqkv_status_code_name(vqkv_status_code code);

/* The library's version, e.g. "0.1.0". */
VQKV_EXPORT const char* vqkv_version(void);

/* Opt-in, process-wide: sets glibc's malloc thresholds (mmap 32 MiB, trim
 * 256 MiB) so that the large responses of loads reuse memory instead of
 * faulting in fresh pages each time; up to 256 MiB of freed heap stays
 * mapped. Call once at startup. VQKV_UNIMPLEMENTED (nothing changed) when
 * the C library is not glibc. See docs/CLIENT.md "Allocator". */
VQKV_EXPORT vqkv_status_code vqkv_tune_allocator(void);

/* An open client. Opaque. */
typedef struct vqkv_client vqkv_client_t;

typedef struct vqkv_client_options {
  size_t struct_size; /* sizeof(vqkv_client_options_t) */

  /* NULL, "" or "embedded": a memory-only store in this process;
   * "embedded:DIR": an in-process store with its disk tier in DIR;
   * "host:port,host:port,...": a cluster of vqkv-servers, each block on
   * `replicas` of them (docs/CLIENT.md "Clusters");
   * "dns:///name:port": a cluster of the addresses `name` resolves to
   * (e.g. a Kubernetes headless Service), re-resolved every 30 s;
   * anything else: a vqkv-server gRPC target, e.g. "127.0.0.1:50051". */
  const char* server;
  /* Bearer token for the server; NULL or "" for none. */
  const char* auth_token;

  /* "fp16", "kivi2", "kivi4" or "vq"; NULL means "fp16". */
  const char* codec;
  /* vq only: the codebook file, or NULL and codebook_hash != 0 to fetch a
   * set registered with the server under that content hash. */
  const char* codebook_path;
  uint64_t codebook_hash;

  /* Names the model weights (required) and their revision (may be NULL). */
  const char* model_id;
  const char* weight_revision;

  /* The KV layout: each 1..65535. */
  int32_t layers;
  int32_t kv_heads;
  int32_t head_dim;
  /* Tokens per block: a positive multiple of 16 (default 64). */
  int32_t block_tokens;
  /* Leading tokens of the first block kept exact: 0..block_tokens
   * (default 4). */
  int32_t sink_tokens;
  /* The engine's KV element type, part of the namespace (blocks of engines
   * with different types never mix): a vqkv_kv_dtype. */
  int32_t kv_dtype;

  /* Deadlines in milliseconds; 0 means the default (lookup 500, I/O
   * 10000). A late answer is a miss. */
  uint32_t lookup_timeout_ms;
  uint32_t io_timeout_ms;
  /* Memory budget of an embedded store in bytes; 0 means 256 MiB. */
  uint64_t embedded_memory_bytes;

  /* Added after the first version (a caller compiled without it gets the
   * default). Clusters only: servers that hold each block, >= 1; 0 means
   * the default, 2. */
  int32_t replicas;
  /* Added after `replicas`. vq only: bits of the key sketch, a 1-bit random
   * projection of each key's VQ residual that keeps attention scores
   * unbiased (docs/CODEC.md "Key sketch"): a multiple of 8 in 8..4096,
   * costing (16 + key_sketch_bits) / head_dim bits per key element; 0 =
   * none. docs/FIDELITY.md measures 64. */
  int32_t key_sketch_bits;

  /* Added after `key_sketch_bits`. TLS to vqkv-servers (docs/CLIENT.md
   * "TLS"); all NULL or "" = plaintext. tls_ca_file: PEM CA bundle the
   * server's certificate must chain to, whose name must match the server's
   * host (or tls_server_name); setting it turns TLS on. tls_cert_file and
   * tls_key_file: PEM client certificate chain and key, both or neither, for
   * servers that require client certificates (vqkv-server --tls-client-ca).
   * tls_server_name: the name the server certificates carry when the
   * client dials addresses (a dns:/// cluster's members). The files are
   * re-read every tls_reload_seconds (0 = 60; at most 86400), so rotated
   * certificates apply to new connections without reopening the client. */
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
  const char* tls_server_name;
  uint32_t tls_reload_seconds;

  /* Added after `tls_reload_seconds`. vq only: the key sketch covers this
   * layer and the later ones only (0 = every layer; must be 0 without a
   * sketch). docs/FIDELITY.md measures 64 bits from layer 16 of 30 on
   * SmolLM2-135M. */
  int32_t key_sketch_first_layer;

  /* Added after `key_sketch_first_layer`. How the engine's keys pair their
   * dimensions under RoPE, a vqkv_key_pairs (0 = adjacent). Blocks hold
   * keys in the codebooks' order; a rotate-half engine's client moves each
   * key head's pairs into it and back (exact), so engines of both kinds
   * share blocks and codebooks. */
  int32_t key_pairs;

  /* Added after `key_pairs`. vq only: nonzero runs the RVQ searches of
   * every save on the tensor cores of CUDA device encode_cuda_device (an
   * engine on a GPU passes its own), instead of the host's cores; each pick
   * is the CPU's or within bf16 rounding of it, and blocks are shared
   * either way.
   * Needs a build with CUDA (else vqkv_client_open fails, saying so). */
  int32_t encode_on_cuda;
  int32_t encode_cuda_device;

  /* Added after `encode_cuda_device`. A vqkv_on_device: whether vq loads
   * into CUDA device pages decode on that GPU (the codes cross PCIe, not
   * float rows); a chain's first block still decodes on the host. AUTO
   * (the default) where the codec allows it (not fp16, no key sketch); ON
   * makes registering CUDA pages fail with VQKV_UNIMPLEMENTED where it
   * does not (docs/CLIENT.md, "Decoding loads on the GPU"). */
  int32_t decode_on_device;

  /* Added after `decode_on_device`. A vqkv_on_device: whether vq saves
   * from CUDA device pages encode on that GPU, straight from the pages (no
   * float copy to the host and back); a chain's first block is still
   * encoded on the host. AUTO (the default) where the codec and the GPU
   * allow it (not fp16, no key sketch, compute capability 8.0 or later);
   * ON makes registering CUDA pages fail with VQKV_UNIMPLEMENTED where
   * they do not (docs/CLIENT.md, "Encoding saves from the pages"). */
  int32_t encode_on_device;
} vqkv_client_options_t;

/* Zeroes *options, then sets struct_size and the defaults: embedded server,
 * fp16 codec, block_tokens 64, sink_tokens 4, kv_dtype VQKV_KV_FLOAT16,
 * replicas 2, decode_on_device and encode_on_device VQKV_ON_DEVICE_AUTO.
 * The layout and model_id are left zero / NULL: the caller must
 * set them.
 *
 * vqkv_client_options_init is a macro passing the struct's size as the
 * caller's vqkv.h declares it: the library writes exactly that many bytes,
 * so a program built against an older (smaller) struct never has memory past
 * it overwritten. Bindings that cannot use the macro (ctypes) call
 * vqkv_client_options_init_sized with the size of their copy of the struct. */
VQKV_EXPORT void vqkv_client_options_init_sized(vqkv_client_options_t* options,
                                                size_t struct_size);
#define vqkv_client_options_init(options) \
  vqkv_client_options_init_sized((options), sizeof(vqkv_client_options_t))

/* Opens a client. On success *out owns it (vqkv_client_destroy); on error
 * *out is NULL. Errors: VQKV_INVALID_ARGUMENT for NULL arguments, a bad
 * struct_size, a bad layout, block_tokens or sink_tokens, an empty model_id,
 * an unknown codec, missing or unexpected codebooks, a bad key_sketch_bits,
 * bad TLS settings (a certificate without a key, a file that is not PEM,
 * TLS settings for an embedded store); VQKV_NOT_FOUND for a TLS file that
 * cannot be read; VQKV_NOT_FOUND / VQKV_DATA_LOSS for a codebook file that
 * cannot be read or parsed; a store that cannot be opened (its directory)
 * gives the store's error. */
VQKV_EXPORT vqkv_status_code
vqkv_client_create(const vqkv_client_options_t* options, vqkv_client_t** out);

/* Waits up to the I/O timeout for background work, then frees the client.
 * NULL is a no-op. */
VQKV_EXPORT void vqkv_client_destroy(vqkv_client_t* client);

/* The client's block size in tokens; 0 for NULL. */
VQKV_EXPORT int32_t vqkv_client_block_tokens(const vqkv_client_t* client);

/* The 16-byte id of the client's namespace (tenant ""), which roots its
 * hash chains (client/hash.h). */
VQKV_EXPORT vqkv_status_code vqkv_client_namespace_id(
    const vqkv_client_t* client, uint8_t out[VQKV_HASH_BYTES]);

/* The chain hashes of the full blocks of tokens[0, num_tokens) under the
 * client's namespace and `salt` (NULL means ""): num_tokens / block_tokens
 * hashes of VQKV_HASH_BYTES bytes each, written consecutively to `hashes`,
 * which has room for `capacity` hashes. *num_hashes (if not NULL) gets the
 * number of full blocks, also when `hashes` is NULL (a size query).
 * Errors: VQKV_INVALID_ARGUMENT for a NULL client, NULL tokens with
 * num_tokens > 0, or a negative token; VQKV_OUT_OF_RANGE when capacity is
 * too small (nothing is written). */
VQKV_EXPORT vqkv_status_code vqkv_hash_chain(
    const vqkv_client_t* client, const int32_t* tokens, size_t num_tokens,
    const char* salt, uint8_t* hashes, size_t capacity, size_t* num_hashes);

/* How many leading tokens of tokens[0, num_tokens) are cached under `salt`
 * (a multiple of block_tokens; 0 when the cache cannot answer in time).
 * The found blocks are leased for a following load. Errors:
 * VQKV_INVALID_ARGUMENT for NULL arguments or a negative token. */
VQKV_EXPORT vqkv_status_code vqkv_lookup(vqkv_client_t* client,
                                         const int32_t* tokens,
                                         size_t num_tokens, const char* salt,
                                         int64_t* cached_tokens);

typedef struct vqkv_store_result {
  size_t struct_size;      /* sizeof(vqkv_store_result_t), set by the caller */
  int64_t blocks;          /* full blocks of the tokens */
  int64_t stored;          /* newly stored */
  int64_t already_present; /* present before the call */
  int64_t failed;          /* not stored (quota, capacity, unreachable) */
  int64_t bytes_sent;      /* encoded bytes put */
} vqkv_store_result_t;

/* Stores the full blocks of tokens[0, num_tokens) whose KV is in
 * keys/values (layout at the top, num_tokens tokens) and that the cache does
 * not hold yet. Synchronous. `result` may be NULL. Errors:
 * VQKV_INVALID_ARGUMENT for NULL arguments, a bad result struct_size or a
 * negative token. */
VQKV_EXPORT vqkv_status_code vqkv_store(vqkv_client_t* client,
                                        const int32_t* tokens,
                                        size_t num_tokens, const char* salt,
                                        const float* keys, const float* values,
                                        vqkv_store_result_t* result);

typedef struct vqkv_load_result {
  size_t struct_size;     /* sizeof(vqkv_load_result_t), set by the caller */
  int64_t tokens;         /* leading tokens written to keys/values */
  int64_t blocks;         /* blocks loaded */
  int64_t bytes_received; /* encoded bytes fetched */
} vqkv_load_result_t;

/* Loads the longest cached prefix of tokens[0, num_tokens) into keys/values
 * (layout at the top, room for num_tokens tokens): *loaded_tokens leading
 * tokens of every layer are written, the rest is untouched. Either output
 * pointer may be NULL. Errors: as vqkv_store. */
VQKV_EXPORT vqkv_status_code vqkv_load(vqkv_client_t* client,
                                       const int32_t* tokens, size_t num_tokens,
                                       const char* salt, float* keys,
                                       float* values, int64_t* loaded_tokens,
                                       vqkv_load_result_t* result);

typedef struct vqkv_stats {
  size_t struct_size; /* sizeof(vqkv_stats_t), set by the caller */
  int64_t lookups;
  int64_t lookup_errors; /* lookups answered 0 because of an error */
  int64_t blocks_stored;
  int64_t blocks_already_present;
  int64_t blocks_store_failed;
  int64_t saves_dropped;
  int64_t blocks_loaded;
  int64_t blocks_load_failed; /* looked up but missing, corrupt or late */
  int64_t bytes_sent;
  int64_t bytes_received;
  int64_t fp16_equivalent_bytes; /* fp16 K+V of the blocks put or fetched */
  int32_t circuit_open;          /* 1 while the backend's circuit is open */
} vqkv_stats_t;

/* Counters since create. Errors: VQKV_INVALID_ARGUMENT for NULL arguments
 * or a bad struct_size. */
VQKV_EXPORT vqkv_status_code vqkv_client_stats(const vqkv_client_t* client,
                                               vqkv_stats_t* stats);

/* --- The paged, layer-wise worker API (client/kv_connector.h) ------------
 *
 * One call per method of vLLM's KV connector v1 worker interface
 * (docs/CLIENT.md maps them): register the engine's page tensors once;
 * per forward pass, start the loads, wait for each layer before its
 * attention, save each layer after it, and wait for the saves' copies.
 * Pages are in host memory, or in CUDA device memory (then copies run on
 * a stream of the connector's own, and wait_for_layer_load and
 * wait_for_save make the engine's compute stream wait instead of blocking).
 * Loads decode into the pages layer by layer on a background thread; saves
 * copy out of the pages during save_layer and are encoded and sent in the
 * background (dropped and counted when staging is full). A failed load reports
 * the engine block ids from its first bad block on; nothing unverified is
 * written. */

/* An open connector over a client. Opaque. */
typedef struct vqkv_connector vqkv_connector_t;

/* One layer's K and V page tensors and their element strides, in the order
 * (block, slot, kv_head, dim): NHD [num_blocks][block_size][kv_heads]
 * [head_dim] is {block_size*kv_heads*head_dim, kv_heads*head_dim, head_dim,
 * 1}; HND swaps the middle two. A fixed layout (no struct_size). */
typedef struct vqkv_paged_layer {
  void* keys;
  void* values;
  int64_t key_strides[4];
  int64_t value_strides[4];
} vqkv_paged_layer_t;

typedef struct vqkv_paged_caches {
  size_t struct_size; /* sizeof(vqkv_paged_caches_t) */
  int64_t num_blocks; /* engine pages */
  int64_t block_size; /* tokens per engine page */
  int32_t kv_heads;
  int32_t head_dim;
  int32_t kv_dtype;   /* a vqkv_kv_dtype */
  int32_t num_layers; /* entries of `layers`: the client's layer count */
  const vqkv_paged_layer_t* layers;
  /* Where the pages are, a vqkv_device (0 = host; a struct_size that ends
   * before this field means host pages); for VQKV_DEVICE_CUDA the CUDA
   * device index and the engine's compute stream (a cudaStream_t; NULL:
   * the legacy default stream) that the connector's copies are ordered
   * with. */
  int32_t device;
  int32_t cuda_device;
  void* cuda_stream;
} vqkv_paged_caches_t;

/* Where page tensors live. CUDA pages need a library built with CUDA
 * (VQKV_UNIMPLEMENTED otherwise) and a usable GPU (VQKV_FAILED_PRECONDITION
 * otherwise, the message says why). */
typedef enum vqkv_device {
  VQKV_DEVICE_HOST = 0,
  VQKV_DEVICE_CUDA = 1
} vqkv_device;

/* A request's cached tokens to load into its pages: the first load_tokens
 * of tokens (vqkv_lookup's answer, a multiple of block_tokens), page
 * block_ids[t / block_size] holding token t. A fixed layout. */
typedef struct vqkv_load_spec {
  const char* request_id;
  const int32_t* tokens;
  size_t num_tokens;
  const char* salt; /* NULL means "" */
  const int32_t* block_ids;
  size_t num_block_ids;
  int64_t load_tokens;
} vqkv_load_spec_t;

/* A request's KV to save from its pages: the full blocks of tokens
 * [skip_tokens, num_tokens) (skip_tokens: loaded or known cached, rounded
 * down to a block). A fixed layout. */
typedef struct vqkv_save_spec {
  const char* request_id;
  const int32_t* tokens;
  size_t num_tokens;
  const char* salt; /* NULL means "" */
  const int32_t* block_ids;
  size_t num_block_ids;
  int64_t skip_tokens;
} vqkv_save_spec_t;

/* Opens a connector over `client`, which must outlive it. Errors:
 * VQKV_INVALID_ARGUMENT for NULL arguments. */
VQKV_EXPORT vqkv_status_code vqkv_connector_create(vqkv_client_t* client,
                                                   vqkv_connector_t** out);
/* Waits up to 5 s for background work (loads, saves), then frees the
 * connector. NULL is a no-op. */
VQKV_EXPORT void vqkv_connector_destroy(vqkv_connector_t* connector);

/* Records the engine's page tensors (once). Errors: VQKV_INVALID_ARGUMENT
 * for a bad struct_size, NULL pointers, an unknown device or tensors that
 * do not match the client's layout (the message names the problem);
 * VQKV_FAILED_PRECONDITION when already registered or the GPU cannot be
 * used; VQKV_UNIMPLEMENTED for CUDA pages in a build without CUDA. */
VQKV_EXPORT vqkv_status_code vqkv_connector_register_kv_caches(
    vqkv_connector_t* connector, const vqkv_paged_caches_t* caches);

/* Whether loads decode (*decode_on_device) and saves encode
 * (*encode_on_device) on the GPU of the registered CUDA pages: 1 or 0 (0
 * for host pages and before register). Under VQKV_ON_DEVICE_AUTO a path
 * the codec or GPU refused stays on the host. Either pointer may be NULL. */
VQKV_EXPORT vqkv_status_code vqkv_connector_device_paths(
    vqkv_connector_t* connector, int32_t* decode_on_device,
    int32_t* encode_on_device);

/* Starts loading each spec's tokens into its pages and returns. Errors:
 * VQKV_FAILED_PRECONDITION before register; VQKV_INVALID_ARGUMENT for bad
 * specs (NULL arrays, too few block ids, a page out of range, load_tokens
 * not a multiple of block_tokens). */
VQKV_EXPORT vqkv_status_code
vqkv_connector_start_load(vqkv_connector_t* connector,
                          const vqkv_load_spec_t* loads, size_t num_loads);

/* Returns once `layer` of every load started last is in the pages (or has
 * failed); the last layer once the whole load is done. */
VQKV_EXPORT vqkv_status_code
vqkv_connector_wait_for_layer_load(vqkv_connector_t* connector, int32_t layer);

/* Copies `layer` of each spec's new full blocks out of the pages; call for
 * layers 0, 1, ... in order with the same specs. After the last layer they
 * are encoded and sent in the background. Errors: as start_load, and
 * VQKV_FAILED_PRECONDITION for a layer out of order. */
VQKV_EXPORT vqkv_status_code
vqkv_connector_save_layer(vqkv_connector_t* connector, int32_t layer,
                          const vqkv_save_spec_t* saves, size_t num_saves);

/* Returns once this pass's pages may be reused (never waits for the
 * network). */
VQKV_EXPORT vqkv_status_code
vqkv_connector_wait_for_save(vqkv_connector_t* connector);

/* Called once per request id; the string lives during the call. */
typedef void (*vqkv_request_fn)(void* context, const char* request_id);

/* Requests whose save (`saved`) or load (`loaded`) finished since the last
 * call, one call of the function each; either function may be NULL. */
VQKV_EXPORT vqkv_status_code
vqkv_connector_get_finished(vqkv_connector_t* connector, vqkv_request_fn saved,
                            vqkv_request_fn loaded, void* context);

/* Engine block ids whose load failed since the last call: up to `capacity`
 * of them into ids[], their count into *count; ids that do not fit stay for
 * the next call, and *pending (if not NULL) says how many. The engine
 * recomputes those pages. */
VQKV_EXPORT vqkv_status_code vqkv_connector_take_load_error_block_ids(
    vqkv_connector_t* connector, int32_t* ids, size_t capacity, size_t* count,
    size_t* pending);

/* Forgets a request: a save not yet sent is dropped; a load in progress
 * completes but is not reported. */
VQKV_EXPORT vqkv_status_code vqkv_connector_cancel(vqkv_connector_t* connector,
                                                   const char* request_id);

/* Waits up to timeout_ms for background work; saves not started by then are
 * dropped. */
VQKV_EXPORT vqkv_status_code
vqkv_connector_shutdown(vqkv_connector_t* connector, uint32_t timeout_ms);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VQKV_VQKV_H_ */
