// The pieces of the prefill-to-decode handoff (client/peer/): the message
// format, the decode side's inbox, and the in-process link.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "client/peer/peer_inbox.h"
#include "client/peer/peer_link.h"
#include "client/peer/peer_message.h"

namespace vqkv::client {
namespace {

std::vector<EncodedBlock> Blocks(int n, size_t bytes, uint32_t first) {
  std::vector<EncodedBlock> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].hash = BlockHash::FromPair(7, first + i);
    out[i].chain_position = first + static_cast<uint32_t>(i);
    out[i].data = std::string(bytes + i, static_cast<char>('a' + i));
  }
  return out;
}

PeerMessage Message(const std::string& id, uint32_t first, int n, bool last,
                    size_t bytes = 100) {
  PeerMessage m;
  m.request_id = id;
  m.first_block = first;
  m.last = last;
  m.blocks = Blocks(n, bytes, first);
  return m;
}

// A request's blocks split over messages of at most max bytes, parsed back
// in order: the same hashes, bytes and chain positions, the last flagged.
TEST(PeerMessageTest, SplitsAndParsesBack) {
  const std::vector<EncodedBlock> blocks = Blocks(5, 300, 3);
  const uint64_t max = kPeerMessageHeaderBytes + 3 + 2 * (20 + 304);
  auto messages = EncodePeerMessages("req", 3, blocks, max);
  ASSERT_TRUE(messages.ok()) << messages.status();
  ASSERT_EQ(messages->size(), 3u);  // 2 + 2 + 1 blocks
  std::vector<EncodedBlock> back;
  for (size_t m = 0; m < messages->size(); ++m) {
    EXPECT_LE((*messages)[m].size(), max);
    auto parsed = ParsePeerMessage((*messages)[m]);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->request_id, "req");
    EXPECT_EQ(parsed->last, m + 1 == messages->size());
    EXPECT_EQ(parsed->first_block, 3 + back.size());
    for (EncodedBlock& b : parsed->blocks) back.push_back(std::move(b));
  }
  ASSERT_EQ(back.size(), blocks.size());
  for (size_t i = 0; i < back.size(); ++i) {
    EXPECT_EQ(back[i].hash, blocks[i].hash);
    EXPECT_EQ(back[i].chain_position, blocks[i].chain_position);
    EXPECT_EQ(back[i].data, blocks[i].data);
  }
  // No blocks: one empty, last message.
  auto empty = EncodePeerMessages("r", 0, {}, 1 << 20);
  ASSERT_TRUE(empty.ok());
  ASSERT_EQ(empty->size(), 1u);
  auto parsed = ParsePeerMessage((*empty)[0]);
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->last);
  EXPECT_TRUE(parsed->blocks.empty());
}

TEST(PeerMessageTest, RefusesWhatIsNotAMessage) {
  EXPECT_EQ(
      EncodePeerMessages("req", 0, Blocks(1, 1000, 0), 500).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePeerMessages(std::string(2000, 'x'), 0, {}, 1 << 20)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  const std::string good =
      (*EncodePeerMessages("req", 0, Blocks(2, 50, 0), 1 << 20))[0];
  ASSERT_TRUE(ParsePeerMessage(good).ok());
  for (size_t cut = 0; cut < good.size(); ++cut) {
    EXPECT_EQ(ParsePeerMessage(good.substr(0, cut)).status().code(),
              absl::StatusCode::kDataLoss)
        << "cut at " << cut;
  }
  EXPECT_EQ(ParsePeerMessage(good + "x").status().code(),
            absl::StatusCode::kDataLoss);
  PeerSlice slice;
  slice.payload_bytes = 8;
  slice.key = "kk";
  slice.value_offset = 4;
  slice.value = "vv";
  slice.refine_offset = 6;
  slice.refine = "r";
  const std::string layer =
      (*EncodePeerLayerMessages("req", 3, {slice}, 1 << 20))[0];
  auto parsed_layer = ParsePeerMessage(layer);
  ASSERT_TRUE(parsed_layer.ok()) << parsed_layer.status();
  EXPECT_TRUE(parsed_layer->is_layer);
  EXPECT_EQ(parsed_layer->layer, 3);
  ASSERT_EQ(parsed_layer->slices.size(), 1u);
  EXPECT_EQ(parsed_layer->slices[0].value, "vv");
  EXPECT_EQ(parsed_layer->slices[0].refine_offset, 6u);
  EXPECT_EQ(parsed_layer->slices[0].refine, "r");
  for (size_t cut = 0; cut < layer.size(); ++cut) {
    EXPECT_EQ(ParsePeerMessage(layer.substr(0, cut)).status().code(),
              absl::StatusCode::kDataLoss)
        << "layer message cut at " << cut;
  }
  slice.value_offset = 7;  // 2 bytes at 7 of an 8-byte payload
  EXPECT_EQ(ParsePeerMessage(
                (*EncodePeerLayerMessages("req", 3, {slice}, 1 << 20))[0])
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  slice.value_offset = 4;
  slice.refine_offset = 8;  // 1 byte at 8 of an 8-byte payload
  EXPECT_EQ(ParsePeerMessage(
                (*EncodePeerLayerMessages("req", 3, {slice}, 1 << 20))[0])
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  std::string bad = good;
  bad[0] ^= 1;
  EXPECT_EQ(ParsePeerMessage(bad).status().code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad[4] = 1;  // version 1: layer slices without a refinement
  EXPECT_EQ(ParsePeerMessage(bad).status().code(),
            absl::StatusCode::kUnimplemented);
}

// A handoff is taken once its last message came, in one piece; a Take
// before that waits, and gives up at its deadline.
TEST(PeerInboxTest, TakeWaitsForTheLastMessage) {
  PeerInbox inbox({});
  inbox.Add(Message("a", 2, 2, false));
  EXPECT_EQ(
      inbox.Take("a", absl::Now() + absl::Milliseconds(20)).status().code(),
      absl::StatusCode::kDeadlineExceeded);
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(30));
    inbox.Add(Message("a", 4, 1, true));
  });
  auto t = inbox.Take("a", absl::Now() + absl::Seconds(30));
  later.join();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->first_block, 2u);
  ASSERT_EQ(t->blocks.size(), 3u);
  EXPECT_EQ(t->blocks[2].chain_position, 4u);
  EXPECT_EQ(inbox.stats().transfers_taken, 1);
  EXPECT_EQ(inbox.stats().bytes, 0u);
  // Taken: gone.
  EXPECT_EQ(inbox.Take("a", absl::Now()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

// Dropped handoffs answer Take at once, saying why: over the inbox's bytes,
// a gap in the blocks, not taken within the ttl. The rest of a dropped
// handoff is ignored; Close wakes a waiting Take.
TEST(PeerInboxTest, DropsAndSaysWhy) {
  PeerInbox::Options o;
  o.max_bytes = 500;
  o.ttl = absl::Milliseconds(50);
  PeerInbox inbox(o);
  inbox.Add(Message("big", 0, 3, false, 100));
  inbox.Add(Message("big", 3, 3, true, 100));  // 600 bytes > 500
  EXPECT_EQ(inbox.Take("big", absl::Now() + absl::Seconds(30)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(inbox.stats().bytes, 0u);

  inbox.Add(Message("gap", 0, 1, false));
  inbox.Add(Message("gap", 2, 1, true));
  inbox.Add(Message("gap", 3, 1, true));  // ignored: the handoff was dropped
  EXPECT_EQ(inbox.Take("gap", absl::Now() + absl::Seconds(30)).status().code(),
            absl::StatusCode::kDataLoss);

  inbox.Add(Message("old", 0, 1, true));
  absl::SleepFor(absl::Milliseconds(80));
  inbox.Add(Message("new", 0, 1, true));  // expires "old"
  EXPECT_EQ(inbox.Take("old", absl::Now() + absl::Seconds(30)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(inbox.Take("new", absl::Now()).ok());
  EXPECT_EQ(inbox.stats().transfers_dropped, 3);

  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    inbox.Close();
  });
  EXPECT_EQ(
      inbox.Take("never", absl::Now() + absl::Seconds(30)).status().code(),
      absl::StatusCode::kCancelled);
  closer.join();
}

// Layer messages' slices are assembled into their blocks' payloads and
// sealed by the header-only entries of the final message: the blocks come
// out as header + payload. A block missing a layer comes out empty (the
// loader then takes it from the cache); a slice outside its payload drops
// the handoff.
TEST(PeerInboxTest, AssemblesLayerSlicesIntoSealedBlocks) {
  // Two blocks of a 2-layer payload: [K0 K1 V0 V1], 3 bytes each.
  const std::string header(64, 'h');
  const std::string payload[2] = {"k0-k1-v0-v1-", "K0-K1-V0-V1-"};
  auto layer_message = [&](int layer, std::vector<int> blocks) {
    PeerMessage m;
    m.request_id = "r";
    m.is_layer = true;
    m.layer = layer;
    for (int b : blocks) {
      PeerSlice sl;
      sl.hash = BlockHash::FromPair(1, b);
      sl.chain_position = static_cast<uint32_t>(b);
      sl.payload_bytes = 12;
      sl.key_offset = 3 * layer;
      sl.key = payload[b].substr(3 * layer, 3);
      sl.value_offset = 6 + 3 * layer;
      sl.value = payload[b].substr(6 + 3 * layer, 3);
      m.slices.push_back(sl);
    }
    // Through the wire format, as the connector sends them.
    auto bytes = EncodePeerLayerMessages(m.request_id, layer, m.slices, 1000);
    EXPECT_TRUE(bytes.ok() && bytes->size() == 1u);
    auto parsed = ParsePeerMessage((*bytes)[0]);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    return *parsed;
  };
  auto final_message = [&] {
    std::vector<EncodedBlock> blocks(2);
    for (int b = 0; b < 2; ++b) {
      blocks[b].hash = BlockHash::FromPair(1, b);
      blocks[b].data = header;
    }
    auto bytes = EncodePeerMessages("r", 0, blocks, 1000, {true, true});
    EXPECT_TRUE(bytes.ok() && bytes->size() == 1u);
    auto parsed = ParsePeerMessage((*bytes)[0]);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->header_only, (std::vector<bool>{true, true}));
    return *parsed;
  };
  PeerInbox inbox({});
  inbox.Add(layer_message(0, {0, 1}));
  inbox.Add(layer_message(1, {0}));  // block 1 never gets layer 1
  inbox.Add(layer_message(1, {0}));  // a layer twice counts once
  EXPECT_EQ(inbox.stats().bytes, 24u);
  inbox.Add(final_message());
  auto t = inbox.Take("r", absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->blocks.size(), 2u);
  EXPECT_EQ(t->blocks[0].data, header + payload[0]);
  EXPECT_EQ(t->blocks[1].data, "") << "incomplete: left to the cache";
  EXPECT_EQ(inbox.stats().bytes, 0u);

  PeerMessage bad = layer_message(0, {0});
  bad.slices[0].key_offset = 11;  // 3 bytes at 11 of a 12-byte payload
  inbox.Add(bad);
  EXPECT_EQ(inbox.Take("r", absl::Now() + absl::Seconds(30)).status().code(),
            absl::StatusCode::kDataLoss);
}

// The in-process link: both ways, in order, bounded, closable.
TEST(LoopbackPeerLinkTest, CarriesMessagesBothWays) {
  auto [a, b] = NewLoopbackPeerLinks(/*max_message_bytes=*/100,
                                     /*max_queued_bytes=*/150);
  ASSERT_TRUE(a->Send("one").ok());
  ASSERT_TRUE(a->Send("two").ok());
  ASSERT_TRUE(b->Send("back").ok());
  EXPECT_EQ(*b->Receive(absl::Seconds(1)), "one");
  EXPECT_EQ(*b->Receive(absl::Seconds(1)), "two");
  EXPECT_EQ(*a->Receive(absl::Seconds(1)), "back");
  EXPECT_EQ(b->Receive(absl::Milliseconds(10)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(a->Send(std::string(101, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  // Over max_queued_bytes the sender waits for the receiver.
  ASSERT_TRUE(a->Send(std::string(100, 'x')).ok());
  std::thread reader([&] {
    absl::SleepFor(absl::Milliseconds(30));
    EXPECT_EQ(b->Receive(absl::Seconds(1))->size(), 100u);
  });
  const absl::Time start = absl::Now();
  ASSERT_TRUE(a->Send(std::string(100, 'y')).ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(20));
  reader.join();
  EXPECT_EQ(*b->Receive(absl::Seconds(1)), std::string(100, 'y'));
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    a->Close();
  });
  EXPECT_EQ(b->Receive(absl::Seconds(30)).status().code(),
            absl::StatusCode::kCancelled);
  closer.join();
  EXPECT_EQ(b->Send("x").code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace vqkv::client
