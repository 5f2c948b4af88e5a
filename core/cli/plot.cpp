// `weft plot RUN_DIR... [-o FILE.svg|FILE.png]`: one SVG with a panel per
// metric (loss, val_loss, lr, grad_norm, tokens/s) against step, every run a
// coloured line in each panel, named in the legend by its folder.
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "weft/error.hpp"

namespace fs = std::filesystem;

namespace weft::cli {

namespace {

struct Panel {
  const char* field;  // metrics.jsonl key
  const char* title;  // with its unit
};
const Panel kPanels[] = {{"loss", "loss (nats/token)"},
                         {"val_loss", "val_loss (nats/token)"},
                         {"lr", "learning rate"},
                         {"grad_norm", "gradient norm (before clipping)"},
                         {"tokens_per_s", "throughput (tokens/s)"}};
const char* const kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};

struct Series {
  std::vector<std::pair<double, double>> points;  // (step, value), finite values only
};

struct Run {
  std::string name;
  std::vector<Series> series;  // one per panel
};

Run read_run(const std::string& dir) {
  const fs::path path = fs::path(dir) / "metrics.jsonl";
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot read (not a run folder with metrics.jsonl?)");
  Run run;
  run.name = fs::path(dir).lexically_normal().filename().string();
  if (run.name.empty()) run.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  run.series.resize(std::size(kPanels));
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number())
      throw Error(path.string() + ":" + std::to_string(n) + ": not a metrics record (a JSON object with a step)");
    const double step = j["step"].get<double>();
    for (size_t p = 0; p < std::size(kPanels); ++p) {
      auto it = j.find(kPanels[p].field);
      if (it == j.end() || it->is_null()) continue;
      if (!it->is_number())
        throw Error(path.string() + ":" + std::to_string(n) + ": " + kPanels[p].field + " is not a number");
      const double v = it->get<double>();
      if (std::isfinite(v)) run.series[p].points.emplace_back(step, v);
    }
  }
  return run;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// A tick label short enough for the axis: 0.0006 -> "6e-04", 2.5 -> "2.5".
std::string tick_label(double v) {
  const double a = std::fabs(v);
  if (a != 0 && (a < 1e-2 || a >= 1e5)) return fmt("%.1e", v);
  return fmt("%.4g", v);
}

// Round tick spacing (1, 2 or 5 x 10^k) for about `count` intervals over [lo, hi].
double nice_step(double lo, double hi, int count) {
  const double raw = (hi - lo) / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

// Widens [lo, hi] to whole ticks; returns the tick values.
std::vector<double> nice_axis(double& lo, double& hi) {
  if (hi <= lo) {
    const double d = std::max(1e-12, std::fabs(lo) * 0.05);
    lo -= d, hi += d;
  }
  const double step = nice_step(lo, hi, 4);
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (double t = lo; t <= hi + step * 1e-6; t += step) ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

struct Box {
  double x, y, w, h;
};

// One panel: frame, title, 5 ticks per axis with grid lines, a polyline per run.
std::string draw_panel(const Panel& panel, size_t index, const std::vector<Run>& runs, const Box& b) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Run& r : runs)
    for (const auto& [x, y] : r.series[index].points) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  std::string s = "<g class=\"panel\" id=\"panel-" + std::string(panel.field) + "\">\n";
  s += "<rect x=\"" + fmt("%.1f", b.x) + "\" y=\"" + fmt("%.1f", b.y) + "\" width=\"" + fmt("%.1f", b.w) +
       "\" height=\"" + fmt("%.1f", b.h) + "\" fill=\"white\" stroke=\"#444\"/>\n";
  s += "<text x=\"" + fmt("%.1f", b.x + b.w / 2) + "\" y=\"" + fmt("%.1f", b.y - 8) +
       "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + xml_escape(panel.title) + "</text>\n";
  if (!(x0 <= x1)) {
    s += "<text x=\"" + fmt("%.1f", b.x + b.w / 2) + "\" y=\"" + fmt("%.1f", b.y + b.h / 2) +
         "\" text-anchor=\"middle\" font-size=\"12\" fill=\"#888\">no data</text>\n</g>\n";
    return s;
  }
  const std::vector<double> xticks = nice_axis(x0, x1), yticks = nice_axis(y0, y1);
  auto px = [&](double x) { return b.x + (x - x0) / (x1 - x0) * b.w; };
  auto py = [&](double y) { return b.y + b.h - (y - y0) / (y1 - y0) * b.h; };
  for (double xv : xticks) {
    s += "<line x1=\"" + fmt("%.1f", px(xv)) + "\" y1=\"" + fmt("%.1f", b.y) + "\" x2=\"" + fmt("%.1f", px(xv)) +
         "\" y2=\"" + fmt("%.1f", b.y + b.h) + "\" stroke=\"#ddd\"/>\n";
    s += "<text x=\"" + fmt("%.1f", px(xv)) + "\" y=\"" + fmt("%.1f", b.y + b.h + 16) +
         "\" text-anchor=\"middle\" font-size=\"11\">" + fmt("%.0f", xv) + "</text>\n";
  }
  for (double yv : yticks) {
    s += "<line x1=\"" + fmt("%.1f", b.x) + "\" y1=\"" + fmt("%.1f", py(yv)) + "\" x2=\"" + fmt("%.1f", b.x + b.w) +
         "\" y2=\"" + fmt("%.1f", py(yv)) + "\" stroke=\"#ddd\"/>\n";
    s += "<text x=\"" + fmt("%.1f", b.x - 6) + "\" y=\"" + fmt("%.1f", py(yv) + 4) +
         "\" text-anchor=\"end\" font-size=\"11\">" + tick_label(yv) + "</text>\n";
  }
  s += "<text x=\"" + fmt("%.1f", b.x + b.w / 2) + "\" y=\"" + fmt("%.1f", b.y + b.h + 32) +
       "\" text-anchor=\"middle\" font-size=\"11\">step</text>\n";
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& pts = runs[r].series[index].points;
    if (pts.empty()) continue;
    std::string coords;
    for (const auto& [x, y] : pts) coords += fmt("%.1f", px(x)) + "," + fmt("%.1f", py(y)) + " ";
    s += "<polyline class=\"series\" data-run=\"" + xml_escape(runs[r].name) + "\" data-metric=\"" + panel.field +
         "\" fill=\"none\" stroke-width=\"1.5\" stroke=\"" + kColours[r % std::size(kColours)] + "\" points=\"" +
         coords + "\"/>\n";
  }
  return s + "</g>\n";
}

std::string render_svg(const std::vector<Run>& runs) {
  const double panel_w = 420, panel_h = 220, left = 80, top = 90, gap_x = 110, gap_y = 80;
  const int cols = 2, rows = 3;
  const double width = left + cols * panel_w + (cols - 1) * gap_x + 40;
  const double height = top + rows * panel_h + (rows - 1) * gap_y + 50;
  std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  fmt("%.0f", width) + "\" height=\"" + fmt("%.0f", height) + "\" viewBox=\"0 0 " + fmt("%.0f", width) +
                  " " + fmt("%.0f", height) + "\" font-family=\"sans-serif\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  // Legend: one swatch and name per run across the top.
  s += "<g class=\"legend\">\n";
  double lx = left;
  for (size_t r = 0; r < runs.size(); ++r) {
    const std::string colour = kColours[r % std::size(kColours)];
    s += "<line x1=\"" + fmt("%.1f", lx) + "\" y1=\"30\" x2=\"" + fmt("%.1f", lx + 24) + "\" y2=\"30\" stroke=\"" +
         colour + "\" stroke-width=\"3\"/>\n";
    s += "<text x=\"" + fmt("%.1f", lx + 30) + "\" y=\"35\" font-size=\"14\">" + xml_escape(runs[r].name) +
         "</text>\n";
    lx += 60 + 8.0 * static_cast<double>(runs[r].name.size());
  }
  s += "</g>\n";
  for (size_t p = 0; p < std::size(kPanels); ++p) {
    const double x = left + static_cast<double>(p % cols) * (panel_w + gap_x);
    const double y = top + static_cast<double>(p / cols) * (panel_h + gap_y);
    s += draw_panel(kPanels[p], p, runs, {x, y, panel_w, panel_h});
  }
  return s + "</svg>\n";
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A .png output is the SVG rasterised by rsvg-convert (Debian's librsvg2-bin)
// where it is installed; weft itself links no image library.
void write_png(const std::string& svg, const std::string& out) {
  if (std::system("command -v rsvg-convert >/dev/null 2>&1") != 0)
    throw Error(out + ": a PNG needs rsvg-convert (Debian package librsvg2-bin); write an .svg instead");
  const std::string cmd = "rsvg-convert -f png -o " + shell_quote(out) + " 2>/dev/null";
  // A converter that dies early must end in an error message, not SIGPIPE (the command exits right after).
  std::signal(SIGPIPE, SIG_IGN);
  std::FILE* pipe = popen(cmd.c_str(), "w");
  if (!pipe) throw Error(out + ": cannot start rsvg-convert: " + std::strerror(errno));
  const bool sent = std::fwrite(svg.data(), 1, svg.size(), pipe) == svg.size();
  if (pclose(pipe) != 0 || !sent) {
    std::error_code ec;
    fs::remove(out, ec);  // not an SVG under a .png name
    throw Error(out + ": rsvg-convert could not write the PNG");
  }
}

}  // namespace

int cmd_plot(const std::vector<std::string>& run_dirs, const std::string& out) {
  std::vector<Run> runs;
  for (const std::string& dir : run_dirs) runs.push_back(read_run(dir));
  const std::string svg = render_svg(runs);
  // Opened here first in both cases, so an unwritable path gets the same message.
  std::FILE* f = std::fopen(out.c_str(), "wb");
  if (!f) throw Error(out + ": cannot write the plot: " + std::strerror(errno));
  const bool ok = std::fwrite(svg.data(), 1, svg.size(), f) == svg.size();
  if (std::fclose(f) != 0 || !ok) throw Error(out + ": cannot write the plot: " + std::strerror(errno));
  if (ends_with(out, ".png")) write_png(svg, out);
  std::printf("%s: %zu runs, %zu panels\n", out.c_str(), runs.size(), std::size(kPanels));
  return 0;
}

}  // namespace weft::cli
