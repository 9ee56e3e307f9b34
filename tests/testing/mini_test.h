// A test harness that needs nothing but the C++ standard library, for tests
// that must also build on a bare CUDA machine (tests/gpu/: the toolkit, CMake
// and ninja, no gtest). It spells the gtest subset those tests use, so a test
// reads like every other test here:
//
//   TEST(Suite, Name) { ASSERT_EQ(a, b) << "context"; EXPECT_LT(x, y); }
//   GTEST_SKIP() << "why";   FAIL() << "why";   SCOPED_TRACE(text);
//
// Parameterised cases are plain loops with SCOPED_TRACE. The program's main
// is VQKV_MINI_TEST_MAIN(): it runs every test (--filter=SUBSTRING to select),
// prints gtest-style lines and the closing line "N passed, N failed,
// N skipped", writes a JUnit XML report with --xml=PATH, and exits 0 when
// all ran and passed, 1 when any failed, and 77 when none failed but some
// were skipped (CTest's SKIP_RETURN_CODE).
//
// Thread safety: assertions must run on the test's own thread.
#ifndef VQKV_TESTS_TESTING_MINI_TEST_H_
#define VQKV_TESTS_TESTING_MINI_TEST_H_

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace vqkv::mini_test {

struct TestCase {
  std::string suite, name;
  std::function<void()> body;
};

inline std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}

// The running test's outcome and trace stack.
struct State {
  bool failed = false;
  bool skipped = false;
  std::string messages;
  std::vector<std::string> traces;
};
inline State& Current() {
  static State state;
  return state;
}

struct Registrar {
  Registrar(const char* suite, const char* name, void (*body)()) {
    Registry().push_back({suite, name, body});
  }
};

// Prints a value when it can be streamed, else a placeholder.
template <typename T, typename = void>
struct Printable : std::false_type {};
template <typename T>
struct Printable<T, std::void_t<decltype(std::declval<std::ostream&>()
                                         << std::declval<const T&>())>>
    : std::true_type {};
template <typename T>
std::string Show(const T& v) {
  if constexpr (std::is_same_v<T, unsigned char> ||
                std::is_same_v<T, signed char>) {
    return std::to_string(static_cast<int>(v));
  } else if constexpr (Printable<T>::value) {
    std::ostringstream os;
    os << v;
    return os.str();
  } else {
    return "<value>";
  }
}

// Collects one failure's text; records it when destroyed, so `<< context`
// can follow the macro.
class Failure {
 public:
  Failure(const char* file, int line, std::string what, bool skip = false)
      : skip_(skip) {
    os_ << file << ":" << line << ": " << what;
  }
  ~Failure() {
    State& st = Current();
    if (skip_) {
      st.skipped = true;
      st.messages += "  skipped: " + os_.str() + "\n";
      return;
    }
    st.failed = true;
    st.messages += "  " + os_.str() + "\n";
    for (auto it = st.traces.rbegin(); it != st.traces.rend(); ++it) {
      st.messages += "    trace: " + *it + "\n";
    }
  }
  Failure(const Failure&) = delete;
  Failure& operator=(const Failure&) = delete;
  template <typename T>
  Failure& operator<<(const T& v) {
    if (!started_) os_ << "\n    ";
    started_ = true;
    os_ << Show(v);
    return *this;
  }

 private:
  std::ostringstream os_;
  bool skip_;
  bool started_ = false;
};

// Lets `return Voidify() & Failure(...) << ...;` end a void test body.
struct Voidify {
  void operator&(const Failure&) {}
};

class ScopedTrace {
 public:
  explicit ScopedTrace(std::string text) {
    Current().traces.push_back(std::move(text));
  }
  ~ScopedTrace() { Current().traces.pop_back(); }
  ScopedTrace(const ScopedTrace&) = delete;
  ScopedTrace& operator=(const ScopedTrace&) = delete;
};

template <typename A, typename B, typename Op>
bool Compare(const A& a, const B& b, Op op, const char* text,
             std::string* what) {
  if (op(a, b)) return true;
  *what =
      std::string("expected ") + text + ", got " + Show(a) + " vs " + Show(b);
  return false;
}

inline std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

inline int RunAll(int argc, char** argv) {
  std::string filter, xml;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--filter=", 9) == 0) filter = argv[i] + 9;
    if (std::strncmp(argv[i], "--gtest_filter=", 15) == 0)
      filter = argv[i] + 15;
    if (std::strncmp(argv[i], "--xml=", 6) == 0) xml = argv[i] + 6;
  }
  int passed = 0, failed = 0, skipped = 0;
  std::ostringstream cases;
  for (const TestCase& t : Registry()) {
    const std::string full = t.suite + "." + t.name;
    if (!filter.empty() && full.find(filter) == std::string::npos) continue;
    Current() = State();
    std::printf("[ RUN      ] %s\n", full.c_str());
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    t.body();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    const State& st = Current();
    std::fputs(st.messages.c_str(), stdout);
    const char* verdict = st.failed    ? "[  FAILED  ]"
                          : st.skipped ? "[  SKIPPED ]"
                                       : "[       OK ]";
    std::printf("%s %s (%.0f ms)\n", verdict, full.c_str(), s * 1e3);
    std::fflush(stdout);
    cases << "  <testcase classname=\"" << XmlEscape(t.suite) << "\" name=\""
          << XmlEscape(t.name) << "\" time=\"" << s << "\">";
    if (st.failed) {
      cases << "<failure message=\"failed\">" << XmlEscape(st.messages)
            << "</failure>";
    } else if (st.skipped) {
      cases << "<skipped message=\"" << XmlEscape(st.messages) << "\"/>";
    }
    cases << "</testcase>\n";
    (st.failed ? failed : st.skipped ? skipped : passed) += 1;
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  if (!xml.empty()) {
    std::ofstream out(xml);
    out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite tests=\""
        << passed + failed + skipped << "\" failures=\"" << failed
        << "\" skipped=\"" << skipped << "\">\n"
        << cases.str() << "</testsuite>\n";
  }
  if (failed > 0) return 1;
  return skipped > 0 ? 77 : 0;
}

}  // namespace vqkv::mini_test

#define VQKV_MT_CONCAT_INNER_(a, b) a##b
#define VQKV_MT_CONCAT_(a, b) VQKV_MT_CONCAT_INNER_(a, b)

#define TEST(suite, name)                                                   \
  static void VQKV_MT_CONCAT_(suite##_##name, _Body)();                     \
  static const ::vqkv::mini_test::Registrar VQKV_MT_CONCAT_(                \
      suite##_##name, _Registrar)(#suite, #name,                            \
                                  &VQKV_MT_CONCAT_(suite##_##name, _Body)); \
  static void VQKV_MT_CONCAT_(suite##_##name, _Body)()

#define VQKV_MT_CMP_(a, b, op, fatal_return)                             \
  if (std::string vqkv_mt_what_; ::vqkv::mini_test::Compare(             \
          (a), (b), [](const auto& x, const auto& y) { return x op y; }, \
          #a " " #op " " #b, &vqkv_mt_what_)) {                          \
  } else                                                                 \
    fatal_return ::vqkv::mini_test::Failure(__FILE__, __LINE__, vqkv_mt_what_)

#define VQKV_MT_FATAL_ return ::vqkv::mini_test::Voidify()&
#define VQKV_MT_NONFATAL_

#define EXPECT_EQ(a, b) VQKV_MT_CMP_(a, b, ==, VQKV_MT_NONFATAL_)
#define EXPECT_NE(a, b) VQKV_MT_CMP_(a, b, !=, VQKV_MT_NONFATAL_)
#define EXPECT_LT(a, b) VQKV_MT_CMP_(a, b, <, VQKV_MT_NONFATAL_)
#define EXPECT_LE(a, b) VQKV_MT_CMP_(a, b, <=, VQKV_MT_NONFATAL_)
#define EXPECT_GT(a, b) VQKV_MT_CMP_(a, b, >, VQKV_MT_NONFATAL_)
#define EXPECT_GE(a, b) VQKV_MT_CMP_(a, b, >=, VQKV_MT_NONFATAL_)
#define ASSERT_EQ(a, b) VQKV_MT_CMP_(a, b, ==, VQKV_MT_FATAL_)
#define ASSERT_NE(a, b) VQKV_MT_CMP_(a, b, !=, VQKV_MT_FATAL_)
#define ASSERT_LT(a, b) VQKV_MT_CMP_(a, b, <, VQKV_MT_FATAL_)
#define ASSERT_LE(a, b) VQKV_MT_CMP_(a, b, <=, VQKV_MT_FATAL_)
#define ASSERT_GT(a, b) VQKV_MT_CMP_(a, b, >, VQKV_MT_FATAL_)
#define ASSERT_GE(a, b) VQKV_MT_CMP_(a, b, >=, VQKV_MT_FATAL_)
#define EXPECT_TRUE(c) EXPECT_EQ(static_cast<bool>(c), true)
#define EXPECT_FALSE(c) EXPECT_EQ(static_cast<bool>(c), false)
#define ASSERT_TRUE(c) ASSERT_EQ(static_cast<bool>(c), true)
#define ASSERT_FALSE(c) ASSERT_EQ(static_cast<bool>(c), false)
#define FAIL() \
  VQKV_MT_FATAL_ ::vqkv::mini_test::Failure(__FILE__, __LINE__, "failed")
#define GTEST_SKIP()                                                \
  VQKV_MT_FATAL_ ::vqkv::mini_test::Failure(__FILE__, __LINE__, "", \
                                            /*skip=*/true)
#define SCOPED_TRACE(text)                                             \
  const ::vqkv::mini_test::ScopedTrace VQKV_MT_CONCAT_(vqkv_mt_trace_, \
                                                       __LINE__)(text)

#define VQKV_MINI_TEST_MAIN()                     \
  int main(int argc, char** argv) {               \
    return ::vqkv::mini_test::RunAll(argc, argv); \
  }

#endif  // VQKV_TESTS_TESTING_MINI_TEST_H_
