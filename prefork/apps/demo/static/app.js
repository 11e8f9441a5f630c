// prefork demo page: resumable upload with progress, live gallery, WebSocket chat.
// Every piece of user-controlled text goes into the page with textContent or as an
// attribute value set through the DOM, never through innerHTML.
"use strict";

(function () {
  const $ = (selector) => document.querySelector(selector);

  // --- gallery --------------------------------------------------------------------
  const gallery = $("#gallery");

  function formatSize(n) {
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? n + " bytes" : n.toFixed(1) + " " + units[i];
  }

  function galleryItem(file) {
    const url = "/files/" + encodeURIComponent(file.name);
    const li = document.createElement("li");
    li.className = "item " + (file.image ? "image" : "file");
    li.dataset.name = file.name;
    const link = document.createElement("a");
    link.href = url;
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = formatSize(file.size);
    if (file.image) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = file.filename;
      link.appendChild(img);
      const caption = document.createElement("span");
      caption.className = "caption";
      caption.textContent = file.filename;
      li.append(link, caption, " ", size);
    } else {
      link.download = file.filename;
      link.textContent = file.filename;
      li.append(link, " ", size);
    }
    return li;
  }

  function addFile(file) {
    for (const li of gallery.children) {
      if (li.dataset.name === file.name) return;
    }
    gallery.prepend(galleryItem(file));
  }

  // --- upload with progress ----------------------------------------------------------
  const form = $("#upload-form");
  const input = $("#file-input");
  const progress = $("#progress");
  const progressText = $("#progress-text");
  const status = $("#upload-status");

  function setProgress(percent) {
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    progress.value = value;
    progressText.textContent = value + " %";
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  // Each file goes up as a resumable upload (the IETF draft, to /resumable/): created
  // empty, then sent in one PATCH from the server's offset. A dropped connection or a
  // server restart is retried from the offset the server reports; the upload's URL is
  // kept in localStorage, so choosing the same file again after a reload resumes too.
  // Without JavaScript the form posts multipart to /upload instead.
  const COLLECTION = "/resumable/";
  const INTEROP = "9";
  const RETRY_DELAYS = [500, 1000, 2000, 4000, 8000];  // then every 8 s, for about two minutes

  function storageKey(file) {
    return "prefork-upload:" + [file.name, file.size, file.lastModified].join(":");
  }

  function request(method, url, headers, body, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      if (onProgress) {
        xhr.upload.onprogress = (ev) => {
          progress.dataset.events = String(Number(progress.dataset.events) + 1);
          onProgress(ev.loaded);
        };
      }
      xhr.onload = () => resolve(xhr);
      xhr.onerror = () => reject(new Error("connection error"));
      xhr.send(body === undefined ? null : body);
    });
  }

  async function createUpload(file) {
    const xhr = await request("POST", COLLECTION, {
      "Upload-Draft-Interop-Version": INTEROP, "Upload-Complete": "?0", "Upload-Length": String(file.size),
      "Content-Type": file.type || "application/octet-stream",
      "Content-Disposition": "attachment; filename*=UTF-8''" + encodeURIComponent(file.name),
    });
    const location = xhr.getResponseHeader("Location");
    if (xhr.status !== 201 || !location) throw new Error("Upload failed: " + xhr.status + " " + xhr.responseText.slice(0, 200));
    localStorage.setItem(storageKey(file), location);
    return location;
  }

  async function serverOffset(location) {
    const xhr = await request("HEAD", location, {"Upload-Draft-Interop-Version": INTEROP});
    if (xhr.status === 404 || xhr.status === 410) return null;  // expired or unknown: start over
    const offset = xhr.getResponseHeader("Upload-Offset");
    if (xhr.status >= 300 || offset === null) throw new Error("Upload failed: " + xhr.status);
    return Number(offset);
  }

  async function uploadFile(file, index, count) {
    const label = count > 1 ? " (" + (index + 1) + " of " + count + ")" : "";
    let location = localStorage.getItem(storageKey(file));
    let failures = 0;
    for (;;) {
      try {
        let offset = location ? await serverOffset(location) : null;
        if (offset === null) {
          location = await createUpload(file);
          offset = 0;
          setStatus("Uploading" + label + "…", false);
        } else if (offset > 0) {
          const percent = Math.floor((offset / file.size) * 100);
          setStatus("resuming at " + percent + " %" + label, false);
        }
        setProgress((offset / Math.max(file.size, 1)) * 100);
        const start = offset;
        const xhr = await request("PATCH", location, {
          "Upload-Draft-Interop-Version": INTEROP, "Upload-Offset": String(start), "Upload-Complete": "?1",
          "Content-Type": "application/partial-upload",
        }, file.slice(start), (loaded) => setProgress(((start + loaded) / Math.max(file.size, 1)) * 100));
        if (xhr.status === 409 || xhr.status === 423) throw new Error("busy");  // ask for the offset again
        if (xhr.status === 404) { location = null; continue; }
        localStorage.removeItem(storageKey(file));
        if (xhr.status !== 201) throw new Error("Upload failed: " + xhr.status + " " + xhr.responseText.slice(0, 200));
        return JSON.parse(xhr.responseText).files;
      } catch (error) {
        if (String(error.message).startsWith("Upload failed")) throw error;
        const delay = RETRY_DELAYS[Math.min(failures, RETRY_DELAYS.length - 1)];
        failures += 1;
        if (failures > 20) throw new Error("Upload failed: the server is unreachable");
        setStatus("Connection lost; retrying in " + delay / 1000 + " s…", true);
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) { setStatus("Choose a file first.", true); return; }
    const files = Array.from(input.files);
    $("#upload-button").disabled = true;
    setProgress(0);
    setStatus("Uploading…", false);
    try {
      let saved = 0;
      for (const [index, file] of files.entries()) {
        const stored = await uploadFile(file, index, files.length);
        stored.forEach(addFile);
        saved += stored.length;
      }
      setProgress(100);
      setStatus("Uploaded " + saved + " file(s).", false);
      form.reset();
    } catch (error) {
      setStatus(error.message, true);
    }
    $("#upload-button").disabled = false;
  });

  // --- chat -------------------------------------------------------------------------------
  const log = $("#chat-log");
  const chatStatus = $("#chat-status");
  const chatForm = $("#chat-form");
  const chatInput = $("#chat-input");
  const chatName = $("#chat-name");
  const sendButton = $("#chat-send");
  const seen = new Set();
  const MAX_LINES = 300;
  let socket = null;
  let retry = 500;

  chatName.value = localStorage.getItem("prefork-name") || "guest-" + Math.random().toString(16).slice(2, 6);
  chatName.addEventListener("change", () => localStorage.setItem("prefork-name", chatName.value));

  function chatLine(message) {
    const li = document.createElement("li");
    li.dataset.id = message.id;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.name;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const time = document.createElement("time");
    const when = new Date(message.ts * 1000);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    li.append(who, text, time);
    return li;
  }

  function trim() {
    while (log.children.length > MAX_LINES) log.firstElementChild.remove();
  }

  function showHistory(messages) {
    // History may arrive after a live message (or again after a reconnect): skip what is
    // shown, and put older messages before the live ones.
    const fragment = document.createDocumentFragment();
    for (const message of messages) {
      if (seen.has(message.id)) continue;
      seen.add(message.id);
      fragment.appendChild(chatLine(message));
    }
    log.prepend(fragment);
    trim();
    log.scrollTop = log.scrollHeight;
  }

  function showMessage(message) {
    if (seen.has(message.id)) return;
    seen.add(message.id);
    log.appendChild(chatLine(message));
    trim();
    log.scrollTop = log.scrollHeight;
  }

  function setOnline(online) {
    chatStatus.textContent = online ? "online" : "offline";
    chatStatus.classList.toggle("online", online);
    sendButton.disabled = !online;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/chat");
    socket.onopen = () => { retry = 500; setOnline(true); };
    socket.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      if (data.type === "history") showHistory(data.messages);
      else if (data.type === "message") showMessage(data);
      else if (data.type === "upload") addFile(data.file);
    };
    socket.onclose = () => {
      setOnline(false);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = chatInput.value.trim();
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ name: chatName.value, text: text }));
    chatInput.value = "";
  });

  connect();
})();
