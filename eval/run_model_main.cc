// Temporary driver; replaced below.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "eval/gguf.h"
#include "eval/llama_model.h"
#include "eval/tokenizer.h"

using namespace vqkv::eval;

int main(int, char** argv) {
  auto g = GgufFile::Open(argv[1]);
  if (!g.ok()) {
    fprintf(stderr, "%s\n", g.status().ToString().c_str());
    return 1;
  }
  auto tok = Tokenizer::FromGguf(**g);
  if (!tok.ok()) {
    fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  auto m = LlamaModel::FromGguf(**g);
  if (!m.ok()) {
    fprintf(stderr, "%s\n", m.status().ToString().c_str());
    return 1;
  }
  std::vector<int32_t> ids = (*tok)->Encode(argv[2]);
  for (int32_t id : ids) printf("%d ", id);
  printf("\n");
  auto cache = (*m)->NewExactCache();
  std::vector<float> hidden, logits((*m)->config().vocab);
  ForwardOptions o;
  o.output = OutputRows::kLast;
  for (int step = 0; step < 40; ++step) {
    auto s = (*m)->Forward(ids, cache.get(), o, &hidden);
    if (!s.ok()) {
      fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    (*m)->Logits(hidden.data(), 1, logits.data());
    int best = 0;
    for (int i = 1; i < (*m)->config().vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    printf("%s", (*tok)->TokenText(best).c_str());
    fflush(stdout);
    ids = {best};
  }
  printf("\n");
}
