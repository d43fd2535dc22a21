// llama.cpp reference data for moa-local's parity tests: for each raw prompt (no chat template),
// the prompt's token ids (BOS as the model's metadata asks, specials not parsed), then N greedy
// steps, each with llama.cpp's argmax and its top-K (id, logit) pairs. Built and run by
// benches/llama_reference.sh against the llama.cpp copy in the llama-cpp-python sdist.
//
//   llama_ref MODEL.gguf PROMPTS.json STEPS TOPK THREADS > out.json   (LLAMA_REF_FA=1: flash attention on)
#include "llama.h"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

using json = nlohmann::ordered_json;

static void quiet(ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPTS.json STEPS TOPK THREADS\n", argv[0]);
        return 2;
    }
    const int steps = std::stoi(argv[3]), topk = std::stoi(argv[4]), threads = std::stoi(argv[5]);
    std::ifstream pf(argv[2]);
    json prompts = json::parse(pf)["prompts"];

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    json out = json::object();
    out["model"] = argv[1];
    out["steps"] = steps;
    out["top_k"] = topk;
    json cases = json::array();
    for (auto & p : prompts) {
        const std::string text = p["text"];
        std::vector<llama_token> ids(text.size() + 8);
        int n = llama_tokenize(vocab, text.c_str(), (int) text.size(), ids.data(), (int) ids.size(), true, false);
        if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
        ids.resize(n);

        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n + steps + 8;
        cp.n_batch = cp.n_ctx;
        cp.n_threads = cp.n_threads_batch = threads;
        cp.flash_attn_type = getenv("LLAMA_REF_FA") ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }

        json greedy = json::array(), tops = json::array();
        std::vector<llama_token> feed = ids;
        for (int s = 0; s < steps; s++) {
            llama_batch b = llama_batch_get_one(feed.data(), (int) feed.size());
            if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
            const float * logits = llama_get_logits_ith(ctx, -1);
            std::vector<int> order(n_vocab);
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + topk, order.end(), [&](int a, int b) {
                return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
            });
            json top = json::array();
            for (int i = 0; i < topk; i++) top.push_back(json::array({order[i], logits[order[i]]}));
            tops.push_back(top);
            greedy.push_back(order[0]);
            feed.assign(1, order[0]);
        }
        llama_free(ctx);
        cases.push_back({{"name", p["name"]}, {"prompt_ids", ids}, {"greedy_ids", greedy}, {"top", tops}});
        fprintf(stderr, ".");
    }
    fprintf(stderr, "\n");
    out["cases"] = cases;
    printf("%s\n", out.dump().c_str());
    llama_model_free(model);
    return 0;
}
