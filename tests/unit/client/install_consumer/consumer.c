/* Opens an embedded fp16 client through the installed C API and hashes a
 * few tokens. */
#include <stdio.h>
#include <vqkv/vqkv.h>

int main(void) {
  vqkv_client_options_t options;
  vqkv_client_t* client = NULL;
  int32_t tokens[64];
  uint8_t hashes[4 * VQKV_HASH_BYTES];
  size_t n = 0;
  int i;
  for (i = 0; i < 64; ++i) tokens[i] = 100 + i;

  vqkv_client_options_init(&options);
  options.model_id = "consumer";
  options.layers = 2;
  options.kv_heads = 2;
  options.head_dim = 64;
  options.block_tokens = 16;
  if (vqkv_client_create(&options, &client) != VQKV_OK) {
    fprintf(stderr, "create: %s\n", vqkv_last_error());
    return 1;
  }
  if (vqkv_hash_chain(client, tokens, 64, "", hashes, 4, &n) != VQKV_OK ||
      n != 4) {
    fprintf(stderr, "hash_chain: %s (n=%zu)\n", vqkv_last_error(), n);
    return 1;
  }
  vqkv_client_destroy(client);
  printf("consumer_c: vqkv %s, 4 hashes, first byte %02x\n", vqkv_version(),
         hashes[0]);
  return 0;
}
