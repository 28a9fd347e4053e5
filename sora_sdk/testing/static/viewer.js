// The local viewer: watch a channel of the local Sora server with sora-js-sdk, or send a test pattern.
//
// URL parameters (all optional): channel_id (connects at once when given), role (recvonly | sendrecv |
// sendonly), video_codec_type (VP8, VP9, AV1, H264), metadata (JSON), signaling_url (default: this
// server's /signaling), colors (the pattern's left and right halves, "rrggbb,rrggbb"), tone (Hz).
// State for people and for tests is in window.viewer.

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const viewer = (window.viewer = {
  state: "loading", // loading | idle | connecting | connected | disconnected | error
  message: "",
  connectionId: null,
  remotes: {}, // stream id -> <video>
  sdkVersion: null,
  connection: null,
});

function log(text) {
  const line = new Date().toISOString().slice(11, 23) + " " + text;
  $("log").textContent = line + "\n" + $("log").textContent.slice(0, 20000);
}

function setState(state, message = "") {
  viewer.state = state;
  viewer.message = message;
  $("status").textContent = state + (message ? ": " + message : "");
  $("status").className = state === "error" ? "error" : "";
  const busy = state === "connecting" || state === "connected";
  $("connect").disabled = busy || !viewer.sdkVersion;
  $("disconnect").disabled = !busy;
}

// ---- the test pattern: two colour halves below a band with a moving box, and a sine tone ----
function parseColors(text) {
  const colors = (text || "d23c28,28a0dc").split(",").map((hex) => "#" + hex.trim().replace(/^#/, ""));
  return colors.length === 2 ? colors : ["#d23c28", "#28a0dc"];
}

function startPattern() {
  const canvas = $("pattern");
  const ctx = canvas.getContext("2d");
  const [left, right] = parseColors(params.get("colors"));
  const band = 48;
  let frame = 0;
  const draw = () => {
    const w = canvas.width, h = canvas.height;
    ctx.fillStyle = left;
    ctx.fillRect(0, band, w / 2, h - band);
    ctx.fillStyle = right;
    ctx.fillRect(w / 2, band, w / 2, h - band);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, band);
    ctx.fillStyle = "#fff";
    ctx.fillRect((frame * 8) % (w - 32), 8, 32, 32);
    frame += 1;
  };
  draw();
  const timer = setInterval(draw, 1000 / 30); // (timers keep running where animation frames may not)
  const audio = new AudioContext();
  const oscillator = new OscillatorNode(audio, { type: "sine", frequency: Number(params.get("tone") || 440) });
  const gain = new GainNode(audio, { gain: 0.25 });
  const destination = audio.createMediaStreamDestination();
  oscillator.connect(gain).connect(destination);
  oscillator.start();
  audio.resume();
  $("local").hidden = false;
  const stream = new MediaStream([
    ...canvas.captureStream(30).getVideoTracks(),
    ...destination.stream.getAudioTracks(),
  ]);
  const stop = () => {
    clearInterval(timer);
    stream.getTracks().forEach((track) => track.stop());
    audio.close();
    $("local").hidden = true;
  };
  return { stream, stop };
}

// ---- remote streams: one <video> (with its audio) per stream ----
function addRemote(stream) {
  if (viewer.remotes[stream.id]) return;
  const figure = document.createElement("figure");
  const video = document.createElement("video");
  video.id = "remote-" + stream.id;
  video.autoplay = true;
  video.playsInline = true;
  video.srcObject = stream;
  const caption = document.createElement("figcaption");
  caption.textContent = "received: " + stream.id;
  figure.append(video, caption);
  $("media").append(figure);
  viewer.remotes[stream.id] = video;
  video.play().catch(() => {
    video.muted = true; // autoplay with sound refused: play muted (click the video for sound)
    video.onclick = () => { video.muted = false; };
    video.play().catch((error) => log("cannot play " + stream.id + ": " + error));
  });
  log("remote stream " + stream.id);
}

function removeRemote(stream) {
  const video = viewer.remotes[stream.id];
  if (!video || stream.getTracks().length > 0) return;
  video.srcObject = null;
  video.parentElement.remove();
  delete viewer.remotes[stream.id];
  log("remote stream gone " + stream.id);
}

// ---- connecting ----
async function connect(Sora) {
  const channelId = $("channel").value.trim();
  const role = $("role").value;
  const url = params.get("signaling_url") ||
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/signaling";
  const options = { audio: true, video: true };
  if (params.get("video_codec_type")) options.videoCodecType = params.get("video_codec_type");
  const metadata = params.get("metadata") ? JSON.parse(params.get("metadata")) : null;
  history.replaceState(null, "", "?" + new URLSearchParams({ ...Object.fromEntries(params), channel_id: channelId, role }));

  setState("connecting", role + " " + channelId + " at " + url);
  const sora = Sora.connection(url);
  const conn = role === "recvonly" ? sora.recvonly(channelId, metadata, options)
    : role === "sendonly" ? sora.sendonly(channelId, metadata, options)
    : sora.sendrecv(channelId, metadata, options);
  viewer.connection = conn;
  const pattern = role === "recvonly" ? null : startPattern();
  conn.on("track", (event) => event.streams.forEach(addRemote));
  conn.on("removetrack", (event) => removeRemote(event.target));
  conn.on("notify", (message) => log("notify " + message.event_type + " " + (message.connection_id || "")));
  conn.on("disconnect", (event) => {
    if (pattern) pattern.stop();
    for (const id of Object.keys(viewer.remotes)) {
      viewer.remotes[id].parentElement.remove();
      delete viewer.remotes[id];
    }
    viewer.connection = null;
    setState("disconnected", [event.type, event.code, event.reason, event.title].filter((x) => x).join(" "));
  });
  try {
    await (pattern ? conn.connect(pattern.stream) : conn.connect());
    viewer.connectionId = conn.connectionId;
    setState("connected", role + " " + channelId + " as " + conn.connectionId);
  } catch (error) {
    if (pattern) pattern.stop();
    viewer.connection = null;
    setState("error", "connect failed: " + (error && error.message ? error.message : error));
  }
}

async function main() {
  if (params.get("channel_id")) $("channel").value = params.get("channel_id");
  if (params.get("role")) $("role").value = params.get("role");
  let Sora;
  try {
    Sora = (await import("./sora.js")).default;
  } catch (error) {
    setState("error", "sora-js-sdk is not installed on this server (GET /viewer/sora.js failed). " +
      "Run `make web` in the sora_sdk checkout (npm install sora-js-sdk into vendor/npm), " +
      "or start the server with --sora-js-sdk PATH/TO/dist/sora.js.");
    return;
  }
  viewer.sdkVersion = Sora.version();
  setState("idle", "sora-js-sdk " + viewer.sdkVersion);
  $("form").onsubmit = (event) => { event.preventDefault(); connect(Sora); };
  $("disconnect").onclick = () => viewer.connection && viewer.connection.disconnect();
  if (params.get("channel_id")) connect(Sora);
}

main();
