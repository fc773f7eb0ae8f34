// Switchboard web client. It speaks the AppRTC room-server and Collider protocols, so it can
// call AppRTC's Android and iOS examples as well as another copy of itself.
// Resilience: joins and signaling messages answered ERROR (an election, a draining node, no
// majority) are tried again, in order, on the next node; the WebSocket reconnects with backoff
// (same room and client id, another node of the cluster if this one is gone) and counts as
// registered only once no error came back; the peer connection restarts ICE when it fails.
(function () {
  'use strict';

  var P = window.loadingParams || {};
  var $ = function (id) { return document.getElementById(id); };
  var sb = window.switchboard = { state: 'idle', signaling: 'closed', log: [] };

  function log(text) {
    sb.log.push(new Date().toISOString().slice(11, 23) + ' ' + text);
    if (sb.log.length > 200) sb.log.shift();
    console.log('[switchboard] ' + text);
  }

  function showMessage(text) {
    var li = document.createElement('li');
    li.textContent = text;
    $('messages').appendChild(li);
    setTimeout(function () { li.remove(); }, 8000);
    log(text);
  }

  var STATE_TEXT = {
    starting: 'Starting…', waiting: 'Waiting for someone to join…', connecting: 'Connecting…',
    connected: 'Connected', reconnecting: 'Connection lost, reconnecting…', failed: 'Call failed',
    hungup: 'You left the call', disconnected: 'Disconnected'
  };

  function render() {
    document.body.dataset.state = sb.state;
    document.body.dataset.signaling = sb.signaling;
    var text = STATE_TEXT[sb.state] || sb.state;
    if (sb.signaling === 'reconnecting' && sb.state !== 'hungup') text += ' (signaling reconnecting…)';
    $('status').textContent = text;
  }

  function setState(state) {
    if (sb.state === state) return;
    log('state ' + sb.state + ' -> ' + state);
    sb.state = state;
    render();
  }

  function setSignaling(state) {
    sb.signaling = state;
    render();
  }

  if (P.headerMessage) {
    $('header-message').textContent = P.headerMessage;
    $('header-message').hidden = false;
  }
  (P.errorMessages || []).concat(P.warningMessages || []).forEach(function (m) {
    document.addEventListener('DOMContentLoaded', function () { showMessage(m); });
  });

  // ---- landing page ----

  function landing() {
    $('landing').hidden = false;
    var input = $('room-input');
    input.value = Math.random().toString(36).slice(2, 10);
    $('room-form').addEventListener('submit', function (e) {
      e.preventDefault();
      if (!input.checkValidity()) return;
      location.href = '/r/' + encodeURIComponent(input.value) + location.search;
    });
  }

  // ---- helpers ----

  // AppRTC's legacy {mandatory, optional} constraints → modern getUserMedia constraints.
  function trackConstraints(c) {
    if (c === true || c === false || c === undefined || c === null) return c !== false;
    var out = {};
    var map = {
      minWidth: ['width', 'min'], maxWidth: ['width', 'max'], minHeight: ['height', 'min'],
      maxHeight: ['height', 'max'], minFrameRate: ['frameRate', 'min'], maxFrameRate: ['frameRate', 'max'],
      frameRate: ['frameRate', 'ideal'], width: ['width', 'ideal'], height: ['height', 'ideal']
    };
    function put(key, value, kind) {
      var m = map[key];
      if (!m) return;
      var target = out[m[0]] = out[m[0]] || {};
      var n = Number(value);
      target[kind === 'ideal' ? 'ideal' : m[1]] = isNaN(n) ? value : n;
    }
    Object.keys(c.mandatory || {}).forEach(function (k) { put(k, c.mandatory[k], 'exact'); });
    (c.optional || []).forEach(function (o) {
      Object.keys(o).forEach(function (k) { put(k, o[k], 'ideal'); });
    });
    return Object.keys(out).length ? out : true;
  }

  // AppRTC's `tt` filter: keep URLs with transport=tt, add it where none is given.
  function filterTransports(servers, tt) {
    if (!tt) return servers;
    return servers.map(function (s) {
      var urls = [].concat(s.urls || s.url || []).filter(function (u) {
        return u.indexOf('transport=') === -1 || u.indexOf('transport=' + tt) !== -1;
      }).map(function (u) {
        return u.indexOf('?transport=') === -1 ? u + '?transport=' + tt : u;
      });
      var copy = Object.assign({}, s, { urls: urls });
      delete copy.url;
      return copy;
    }).filter(function (s) { return s.urls.length > 0; });
  }

  function wsUrlOf(base) {
    return base.replace(/^http/, 'ws') + '/ws';
  }

  // A request to a node that is paused or cut off may never be answered: give up on it after
  // this long and try again (on another node).
  var REQUEST_TIMEOUT_MS = 8000;
  function request(url, options) {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, REQUEST_TIMEOUT_MS);
    return fetch(url, Object.assign({ signal: ctl.signal }, options)).finally(function () { clearTimeout(timer); });
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // Retry delays: 250 ms doubling to 4 s, with jitter.
  function backoff(attempt) {
    return Math.min(4000, 250 * Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
  }

  // Collider answers a register with nothing, and with an error frame (then a close) when it
  // refuses it. A socket that stayed open this long after registering without one is registered.
  var REGISTER_CONFIRM_MS = 1500;
  // Messages waiting to go out, in order; beyond this the oldest are dropped.
  var OUTBOX_MAX = 500;
  // Attempts per message (about a minute) before it is given up.
  var SEND_ATTEMPTS = 20;

  // ---- the call ----

  function Call() {
    this.room = P.roomId;
    this.clientId = null;
    this.isInitiator = false;
    this.pcConfig = P.peerConnectionConfig || { iceServers: [] };
    // Room-server and signaling bases of every node we may use; the first is the page's own.
    this.nodes = [location.origin].concat((P.signalingNodes || []).filter(function (n) { return n !== location.origin; }));
    this.nodeIndex = 0;
    this.wssUrl = P.wssUrl;
    this.wssPostUrl = P.wssPostUrl;
    this.ws = null;
    this.registered = false;
    this.registerTimer = null;
    this.wsAttempts = 0;
    this.outbox = [];
    this.sending = false;
    this.pc = null;
    this.stream = null;
    this.pending = [];
    this.makingOffer = false;
    this.hungUp = false;
    this.disconnectTimer = null;
    this.restarts = 0;
    sb.call = this;
  }

  Call.prototype.start = async function () {
    var self = this;
    $('call').hidden = false;
    $('room-info').textContent = 'Room ' + this.room;
    setState('starting');
    this.bindControls();
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: trackConstraints((P.mediaConstraints || {}).audio),
        video: trackConstraints((P.mediaConstraints || {}).video)
      });
      $('local-video').srcObject = this.stream;
    } catch (e) {
      showMessage('No camera or microphone (' + e.name + '); joining to receive only.');
    }
    this.openSocket();
    var joined = await this.join();
    if (!joined) return;
    this.iceServers = await this.fetchIceServers();
    this.newPeerConnection();
    this.watchMedia();
    this.watchStats();
    this.listDevices();
    this.register();
    if (this.isInitiator) {
      setState('waiting');
      await this.makeOffer(false);
    } else {
      setState('connecting');
      // Offers before candidates: the initiator's stored messages, in the order it posted them.
      var msgs = (this.joinMessages || []).map(function (m) { try { return JSON.parse(m); } catch (e) { return null; } })
        .filter(Boolean);
      msgs.sort(function (a, b) { return (a.type === 'offer' ? 0 : 1) - (b.type === 'offer' ? 0 : 1); });
      for (var i = 0; i < msgs.length; i++) await self.onSignal(msgs[i]);
    }
    if (P.isLoopback && window.SwitchboardLoopback) {
      new window.SwitchboardLoopback(this).start();
    }
  };

  Call.prototype.base = function () {
    return this.nodes[this.nodeIndex % this.nodes.length];
  };

  // A join answered ERROR (an election, a draining node, no majority) or not at all is tried
  // again on the next node, with backoff; FULL and the other answers are final.
  var JOIN_ATTEMPTS = 10;
  Call.prototype.join = async function () {
    var j;
    for (var attempt = 0; attempt < JOIN_ATTEMPTS && !this.hungUp; attempt++) {
      try {
        var r = await request(this.base() + '/join/' + this.room + location.search, { method: 'POST' });
        if (r.status !== 200) throw new Error('HTTP ' + r.status);
        j = await r.json();
        if (j.result !== 'ERROR') break;
        throw new Error('ERROR');
      } catch (e) {
        j = null;
        log('join failed on ' + this.base() + ': ' + e.message);
        if (attempt === 1) showMessage('Joining is taking longer than usual; trying again…');
        this.nodeIndex++;
        await sleep(backoff(attempt));
      }
    }
    if (!j) { showMessage('Could not join the room.'); setState('failed'); return false; }
    if (j.result === 'FULL') {
      location.href = '/r/' + this.room;
      return false;
    }
    if (j.result !== 'SUCCESS') {
      showMessage('Could not join the room: ' + j.result);
      setState('failed');
      return false;
    }
    var p = j.params;
    this.clientId = p.client_id;
    this.isInitiator = p.is_initiator === 'true';
    this.joinMessages = p.messages || [];
    this.wssUrl = p.wss_url || this.wssUrl;
    this.wssPostUrl = p.wss_post_url || this.wssPostUrl;
    if (p.signaling_nodes && p.signaling_nodes.length) {
      var mine = this.base();
      this.nodes = [mine].concat(p.signaling_nodes.filter(function (n) { return n !== mine; }));
      this.nodeIndex = 0;
    }
    sb.clientId = this.clientId;
    sb.isInitiator = this.isInitiator;
    log('joined room ' + this.room + ' as ' + this.clientId + (this.isInitiator ? ' (initiator)' : ''));
    return true;
  };

  Call.prototype.fetchIceServers = async function () {
    var configured = this.pcConfig.iceServers || [];
    if (configured.length || !P.iceServerRequestUrl) return configured;
    var url = P.iceServerRequestUrl;
    // After a failover, ask a live node rather than the one the page came from.
    if (this.nodeIndex > 0) url = url.replace(/^https?:\/\/[^/]+/, this.base());
    try {
      var r = await request(url, { method: 'POST' });
      if (r.status !== 200) throw new Error('HTTP ' + r.status);
      var j = await r.json();
      return filterTransports(j.iceServers || [], P.iceServerTransports);
    } catch (e) {
      showMessage('Could not get ICE servers: ' + e.message);
      return [];
    }
  };

  Call.prototype.rtcConfig = function () {
    return {
      iceServers: this.iceServers,
      iceTransportPolicy: this.pcConfig.iceTransports || this.pcConfig.iceTransportPolicy || 'all',
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require'
    };
  };

  Call.prototype.newPeerConnection = function () {
    var self = this;
    if (this.pc) this.pc.close();
    var pc = this.pc = sb.pc = new RTCPeerConnection(this.rtcConfig());
    this.pending = [];
    if (this.stream) {
      this.stream.getTracks().forEach(function (t) { pc.addTrack(t, self.stream); });
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    pc.onicecandidate = function (e) {
      if (e.candidate && e.candidate.candidate) {
        self.send({ type: 'candidate', label: e.candidate.sdpMLineIndex, id: e.candidate.sdpMid, candidate: e.candidate.candidate });
      }
    };
    pc.onicecandidateerror = function (e) {
      log('ICE candidate error ' + e.errorCode + ' ' + (e.url || '') + ' ' + (e.errorText || ''));
    };
    pc.ontrack = function (e) {
      var v = $('remote-video');
      v.srcObject = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
    };
    pc.oniceconnectionstatechange = function () { self.onIceState(pc); };
    pc.onconnectionstatechange = function () { self.onIceState(pc); };
  };

  Call.prototype.onIceState = function (pc) {
    if (pc !== this.pc || this.hungUp) return;
    var s = pc.iceConnectionState;
    log('ICE ' + s + ', connection ' + pc.connectionState);
    if (s === 'connected' || s === 'completed') {
      clearTimeout(this.disconnectTimer);
      this.restarts = 0;
      setState('connected');
    } else if (s === 'failed') {
      setState('reconnecting');
      this.restartIce();
    } else if (s === 'disconnected') {
      setState('reconnecting');
      var self = this;
      clearTimeout(this.disconnectTimer);
      // A brief loss often heals by itself; restart only if it does not.
      this.disconnectTimer = setTimeout(function () {
        if (pc === self.pc && pc.iceConnectionState === 'disconnected') self.restartIce();
      }, 1500);
    } else if (s === 'checking' && sb.state !== 'reconnecting') {
      setState('connecting');
    }
  };

  // ICE restart: fresh ICE servers (a relay on a live node) and a new offer. The initiator
  // offers; the other side asks it to by offering too (perfect negotiation resolves glare).
  Call.prototype.restartIce = async function () {
    if (this.hungUp || !this.pc) return;
    this.restarts++;
    log('ICE restart #' + this.restarts);
    this.iceServers = await this.fetchIceServers();
    try { this.pc.setConfiguration(this.rtcConfig()); } catch (e) { log('setConfiguration: ' + e); }
    await this.makeOffer(true);
  };

  // A relay that dies takes the browser 5 s or more to notice: the pair stays "connected" until
  // its consent checks time out. So during a call the page watches what arrives; after
  // STALL_MS without a byte it restarts ICE at once (a relay on a live node, a new offer).
  var STALL_MS = 1500;
  // Only a peer that sends media can stall: one that joined to receive only (no camera) sends
  // none, and its silence is no dead relay. Restarts that do not bring media back wait longer
  // each time (4.5 s, then doubling to 30 s).
  Call.prototype.watchMedia = function () {
    var self = this;
    var last = -1, changed = Date.now(), restarted = 0, wait = 3 * STALL_MS;
    clearInterval(this.mediaTimer);
    this.mediaTimer = setInterval(async function () {
      var pc = self.pc;
      if (self.hungUp) return clearInterval(self.mediaTimer);
      if (!pc || sb.state !== 'connected' || !remoteSends(pc)) { changed = Date.now(); return; }
      var bytes = 0;
      try {
        (await pc.getStats()).forEach(function (r) { if (r.type === 'inbound-rtp') bytes += r.bytesReceived || 0; });
      } catch (e) { return; }
      var now = Date.now();
      if (bytes !== last) {
        if (last >= 0 && bytes > last) wait = 3 * STALL_MS;
        last = bytes;
        changed = now;
        return;
      }
      if (now - changed >= STALL_MS && now - restarted >= wait) {
        restarted = now;
        wait = Math.min(30000, wait * 2);
        log('no media for ' + (now - changed) + ' ms');
        self.restartIce();
      }
    }, 250);
  };

  // Whether the remote description offers media towards us (an m-line it sends on).
  function remoteSends(pc) {
    var sdp = pc.remoteDescription && pc.remoteDescription.sdp;
    if (!sdp) return false;
    return sdp.split(/\r?\nm=/).slice(1).some(function (m) {
      return !/\r?\na=(recvonly|inactive)/.test(m) && !/^application/.test(m);
    });
  }

  Call.prototype.makeOffer = async function (iceRestart) {
    var pc = this.pc;
    try {
      this.makingOffer = true;
      var offer = await pc.createOffer({ iceRestart: !!iceRestart });
      if (pc.signalingState !== 'stable') return;
      await pc.setLocalDescription(offer);
      this.send({ type: 'offer', sdp: pc.localDescription.sdp });
    } catch (e) {
      log('offer failed: ' + e);
    } finally {
      this.makingOffer = false;
    }
  };

  Call.prototype.onSignal = async function (msg) {
    var pc = this.pc;
    if (!pc || this.hungUp) return;
    try {
      if (msg.type === 'offer') {
        var collision = this.makingOffer || pc.signalingState !== 'stable';
        // The initiator is the impolite side: on glare its own offer wins.
        if (collision && this.isInitiator) { log('ignoring colliding offer'); return; }
        if (collision) await pc.setLocalDescription({ type: 'rollback' });
        await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
        await this.flushCandidates();
        await pc.setLocalDescription(await pc.createAnswer());
        this.send({ type: 'answer', sdp: pc.localDescription.sdp });
        if (sb.state === 'waiting' || sb.state === 'starting') setState('connecting');
      } else if (msg.type === 'answer') {
        if (pc.signalingState !== 'have-local-offer') { log('stray answer ignored'); return; }
        await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        await this.flushCandidates();
      } else if (msg.type === 'candidate') {
        var c = { candidate: msg.candidate, sdpMLineIndex: msg.label, sdpMid: msg.id };
        if (!pc.remoteDescription) this.pending.push(c);
        else await pc.addIceCandidate(c);
      } else if (msg.type === 'bye') {
        this.onRemoteHangup();
      } else if (msg.type === 'remove-candidates') {
        log('remove-candidates ignored');
      } else {
        log('unknown message type ' + msg.type);
      }
    } catch (e) {
      log('signaling error on ' + msg.type + ': ' + e);
    }
  };

  Call.prototype.flushCandidates = async function () {
    var list = this.pending;
    this.pending = [];
    for (var i = 0; i < list.length; i++) {
      try { await this.pc.addIceCandidate(list[i]); } catch (e) { log('candidate: ' + e); }
    }
  };

  // The other person hung up: like AppRTC, become the initiator and offer to whoever joins next.
  Call.prototype.onRemoteHangup = function () {
    showMessage('The other person left the call.');
    $('remote-video').srcObject = null;
    this.isInitiator = true;
    sb.isInitiator = true;
    this.newPeerConnection();
    setState('waiting');
    this.makeOffer(false);
  };

  // ---- signaling ----

  // Messages leave one at a time, in the order they were made: a candidate must not overtake
  // its offer, whichever way each goes. The initiator posts to the room server (which stores
  // messages while it is alone); the other side uses its registered WebSocket, or Collider's
  // HTTP POST while the socket is down or not yet registered.
  Call.prototype.send = function (msg) {
    if (this.outbox.length >= OUTBOX_MAX) {
      this.outbox.shift();
      log('signaling backlog full; oldest message dropped');
    }
    this.outbox.push({ text: JSON.stringify(msg), attempts: 0 });
    this.pump();
  };

  Call.prototype.pump = async function () {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.outbox.length && !this.hungUp) {
        var item = this.outbox[0];
        var outcome = await this.deliver(item.text);
        if (outcome === 'retry' && ++item.attempts < SEND_ATTEMPTS) {
          // The node answered ERROR or did not answer: after the second try, the next node.
          if (item.attempts >= 2) this.nodeIndex++;
          await sleep(backoff(item.attempts));
          continue;
        }
        if (outcome !== 'sent') log('signaling message given up (' + outcome + '): ' + item.text.slice(0, 60));
        this.outbox.shift();
      }
    } finally {
      this.sending = false;
    }
  };

  // One attempt: 'sent', 'retry' (ERROR, a 5xx or no answer: worth trying again) or 'refused'.
  Call.prototype.deliver = async function (text) {
    if (!this.isInitiator && this.ws && this.ws.readyState === WebSocket.OPEN && this.registered) {
      this.ws.send(JSON.stringify({ cmd: 'send', msg: text }));
      return 'sent';
    }
    var url = this.isInitiator
      ? this.base() + '/message/' + this.room + '/' + this.clientId + location.search
      : this.postBase() + '/' + this.room + '/' + this.clientId;
    try {
      var r = await request(url, { method: 'POST', body: text });
      if (r.status >= 500) { log('POST ' + url + ' answered ' + r.status); return 'retry'; }
      if (r.status !== 200) { log('POST ' + url + ' answered ' + r.status); return 'refused'; }
      if (!this.isInitiator) return 'sent';
      var j = await r.json();
      if (j.result === 'SUCCESS') return 'sent';
      log('message answered ' + j.result);
      return j.result === 'ERROR' ? 'retry' : 'refused';
    } catch (e) {
      log('POST ' + url + ' failed: ' + e.message);
      return 'retry';
    }
  };

  Call.prototype.postBase = function () {
    return this.nodeIndex > 0 ? this.base() : this.wssPostUrl;
  };

  Call.prototype.openSocket = function () {
    var self = this;
    if (this.hungUp) return;
    var url = this.nodeIndex > 0 ? wsUrlOf(this.base()) : this.wssUrl;
    var ws;
    try { ws = this.ws = sb.ws = new WebSocket(url); } catch (e) { log('WebSocket: ' + e); return this.reconnect(); }
    this.registered = false;
    ws.onopen = function () {
      log('signaling open ' + url);
      setSignaling('open');
      self.register();
    };
    ws.onmessage = function (e) {
      var frame;
      try { frame = JSON.parse(e.data); } catch (err) { log('bad frame ' + e.data); return; }
      if (frame.error) {
        // A refused registration (the server closes the socket next): not registered.
        log('signaling error: ' + frame.error);
        clearTimeout(self.registerTimer);
        self.registerTimer = null;
        self.registered = false;
        return;
      }
      if (!frame.msg) return;
      var msg;
      try { msg = JSON.parse(frame.msg); } catch (err) { log('bad message ' + frame.msg); return; }
      self.onSignal(msg);
    };
    ws.onclose = function (e) {
      if (ws !== self.ws) return;
      clearTimeout(self.registerTimer);
      self.registerTimer = null;
      self.registered = false;
      log('signaling closed (' + e.code + ')');
      if (self.hungUp) { setSignaling('closed'); return; }
      self.reconnect();
    };
  };

  // Backoff 250 ms → 5 s with jitter; from the second failure on, try the next node.
  Call.prototype.reconnect = function () {
    var self = this;
    setSignaling('reconnecting');
    var delay = Math.min(5000, 250 * Math.pow(2, this.wsAttempts)) * (0.75 + Math.random() * 0.5);
    this.wsAttempts++;
    if (this.wsAttempts >= 2 && this.nodes.length > 1) this.nodeIndex++;
    setTimeout(function () { self.openSocket(); }, delay);
  };

  // Registered only once the socket stayed open without an error frame for
  // REGISTER_CONFIRM_MS; until then messages go over Collider's HTTP POST.
  Call.prototype.register = function () {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.clientId || this.registered || this.registerTimer) return;
    var self = this, ws = this.ws;
    ws.send(JSON.stringify({ cmd: 'register', roomid: this.room, clientid: this.clientId }));
    setSignaling('registering');
    this.registerTimer = setTimeout(function () {
      self.registerTimer = null;
      if (ws !== self.ws || ws.readyState !== WebSocket.OPEN) return;
      self.registered = true;
      self.wsAttempts = 0;
      setSignaling('registered');
      log('registered as ' + self.clientId);
      self.pump();
    }, REGISTER_CONFIRM_MS);
  };

  // ---- call statistics, quality, devices ----

  // Every second: what the info panel shows (AppRTC's `i`) and the quality indicator, from the
  // peer connection's statistics. Rates are over the last second.
  Call.prototype.watchStats = function () {
    var self = this;
    var prev = null;
    clearInterval(this.statsTimer);
    this.statsTimer = setInterval(async function () {
      if (self.hungUp) return clearInterval(self.statsTimer);
      if (!self.pc) return;
      var report;
      try { report = await self.pc.getStats(); } catch (e) { return; }
      var now = Date.now();
      var cur = { at: now, bytesIn: 0, bytesOut: 0, lost: 0, received: 0 };
      var info = { resolution: null, frameRate: null, bitrateIn: 0, bitrateOut: 0, rttMs: null, packetLoss: null,
        localCandidate: null, remoteCandidate: null, protocol: null, turnServer: null };
      var pair = null;
      report.forEach(function (s) {
        if (s.type === 'inbound-rtp') {
          cur.bytesIn += s.bytesReceived || 0;
          cur.lost += Math.max(0, s.packetsLost || 0);
          cur.received += s.packetsReceived || 0;
          if (s.kind === 'video' && s.frameWidth) {
            info.resolution = s.frameWidth + '×' + s.frameHeight;
            info.frameRate = s.framesPerSecond || 0;
          }
        }
        if (s.type === 'outbound-rtp') cur.bytesOut += s.bytesSent || 0;
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      });
      if (!pair) report.forEach(function (s) { if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s; });
      if (pair) {
        var l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
        info.localCandidate = l ? l.candidateType : null;
        info.remoteCandidate = r ? r.candidateType : null;
        info.protocol = l ? (l.relayProtocol ? l.protocol + ' (relay over ' + l.relayProtocol + ')' : l.protocol) : null;
        if (typeof pair.currentRoundTripTime === 'number') info.rttMs = Math.round(pair.currentRoundTripTime * 1000);
        // A relayed pair's local candidate names the TURN server (and so the node) it uses.
        if (l && l.candidateType === 'relay') info.turnServer = l.url || (l.address + ':' + l.port);
      }
      if (prev) {
        var secs = Math.max(0.001, (now - prev.at) / 1000);
        info.bitrateIn = Math.max(0, Math.round((cur.bytesIn - prev.bytesIn) * 8 / secs / 1000));
        info.bitrateOut = Math.max(0, Math.round((cur.bytesOut - prev.bytesOut) * 8 / secs / 1000));
        var lost = cur.lost - prev.lost, got = cur.received - prev.received;
        if (lost + got > 0) info.packetLoss = Math.max(0, lost) / (Math.max(0, lost) + Math.max(0, got));
      }
      prev = cur;
      sb.info = info;
      self.renderQuality(info);
      if (!$('info').hidden) renderInfo(info);
    }, 1000);
  };

  // good: round trip under 150 ms and loss under 2 %; fair: under 400 ms and 8 %; else poor.
  // No media flowing (or the call reconnecting) shows as such.
  Call.prototype.renderQuality = function (info) {
    var level, text;
    if (sb.state === 'reconnecting') {
      level = 'poor'; text = 'Reconnecting';
    } else if (!info.localCandidate || (info.bitrateIn === 0 && remoteSends(this.pc))) {
      level = 'none'; text = 'No media';
    } else {
      var rtt = info.rttMs === null ? 0 : info.rttMs, loss = info.packetLoss || 0;
      level = rtt < 150 && loss < 0.02 ? 'good' : rtt < 400 && loss < 0.08 ? 'fair' : 'poor';
      text = { good: 'Good connection', fair: 'Fair connection', poor: 'Poor connection' }[level];
    }
    sb.quality = level;
    $('quality').dataset.level = level;
    $('quality-text').textContent = text;
  };

  function renderInfo(info) {
    var rows = [
      ['Resolution', info.resolution || '–'],
      ['Frame rate', info.frameRate === null ? '–' : info.frameRate + ' fps'],
      ['Bitrate in', info.bitrateIn + ' kbit/s'],
      ['Bitrate out', info.bitrateOut + ' kbit/s'],
      ['Round trip', info.rttMs === null ? '–' : info.rttMs + ' ms'],
      ['Packet loss', info.packetLoss === null ? '–' : (info.packetLoss * 100).toFixed(1) + ' %'],
      ['Candidates', info.localCandidate ? info.localCandidate + ' → ' + info.remoteCandidate : '–'],
      ['Transport', info.protocol || '–'],
      ['TURN server', info.turnServer || 'none (direct path)'],
      ['Signaling', sb.signaling + ' via ' + (sb.call ? sb.call.base() : '–')]
    ];
    var dl = $('info-list');
    dl.textContent = '';
    rows.forEach(function (r) {
      var dt = document.createElement('dt'), dd = document.createElement('dd');
      dt.textContent = r[0];
      dd.textContent = r[1];
      dl.appendChild(dt);
      dl.appendChild(dd);
    });
  }

  // The camera and microphone lists; choosing one swaps the track the call sends, without
  // renegotiating.
  Call.prototype.listDevices = async function () {
    var self = this;
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    var devices;
    try { devices = await navigator.mediaDevices.enumerateDevices(); } catch (e) { return; }
    var current = function (kind) {
      var t = self.stream && self.stream.getTracks().filter(function (x) { return x.kind === kind; })[0];
      return t && t.getSettings ? t.getSettings().deviceId : null;
    };
    [['videoinput', 'camera-select', 'video'], ['audioinput', 'mic-select', 'audio']].forEach(function (k) {
      var select = $(k[1]);
      select.textContent = '';
      devices.filter(function (d) { return d.kind === k[0]; }).forEach(function (d, i) {
        var o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || (k[2] === 'video' ? 'Camera ' : 'Microphone ') + (i + 1);
        select.appendChild(o);
      });
      var now = current(k[2]);
      if (now) select.value = now;
      select.onchange = function () { self.useDevice(k[2], select.value); };
    });
    sb.devices = { camera: current('video'), mic: current('audio') };
  };

  Call.prototype.useDevice = async function (kind, deviceId) {
    var constraints = {};
    constraints[kind] = { deviceId: { exact: deviceId } };
    var track;
    try {
      track = (await navigator.mediaDevices.getUserMedia(constraints)).getTracks()[0];
    } catch (e) {
      showMessage('Cannot use that ' + (kind === 'video' ? 'camera' : 'microphone') + ' (' + e.name + ').');
      return;
    }
    var old = this.stream && this.stream.getTracks().filter(function (t) { return t.kind === kind; })[0];
    if (old) track.enabled = old.enabled;
    var sender = this.pc && this.pc.getSenders().filter(function (s) { return s.track && s.track.kind === kind; })[0];
    if (sender) await sender.replaceTrack(track);
    // A new stream for the preview: the element picks up a new source, not a changed one.
    var tracks = (this.stream ? this.stream.getTracks() : []).filter(function (t) { return t !== old; });
    this.stream = new MediaStream(tracks.concat([track]));
    $('local-video').srcObject = this.stream;
    if (old) old.stop();
    sb.devices = sb.devices || {};
    sb.devices[kind === 'video' ? 'camera' : 'mic'] = deviceId;
    log('now using ' + kind + ' ' + (track.label || deviceId));
  };

  Call.prototype.toggleInfo = function () {
    var panel = $('info');
    panel.hidden = !panel.hidden;
    $('show-info').setAttribute('aria-pressed', String(!panel.hidden));
    if (!panel.hidden && sb.info) renderInfo(sb.info);
  };

  Call.prototype.toggleFullscreen = function () {
    if (document.fullscreenElement) {
      document.exitFullscreen().catch(function () {});
    } else {
      var el = $('call');
      (el.requestFullscreen ? el.requestFullscreen() : Promise.reject(new Error('no fullscreen')))
        .catch(function (e) { showMessage('Fullscreen is not available: ' + e.message); });
    }
  };

  // ---- controls and hang-up ----

  Call.prototype.bindControls = function () {
    var self = this;
    function toggle(button, kind) {
      var on = button.getAttribute('aria-pressed') !== 'true';
      button.setAttribute('aria-pressed', String(on));
      if (self.stream) self.stream.getTracks().forEach(function (t) { if (t.kind === kind) t.enabled = !on; });
    }
    $('mute-audio').onclick = function () { toggle(this, 'audio'); };
    $('mute-video').onclick = function () { toggle(this, 'video'); };
    $('hangup').onclick = function () { self.hangup(); };
    $('show-info').onclick = function () { self.toggleInfo(); };
    $('fullscreen').onclick = function () { self.toggleFullscreen(); };
    $('choose-devices').onclick = function () {
      var panel = $('devices');
      panel.hidden = !panel.hidden;
      this.setAttribute('aria-pressed', String(!panel.hidden));
      if (!panel.hidden) self.listDevices();
    };
    document.addEventListener('fullscreenchange', function () {
      sb.fullscreen = !!document.fullscreenElement;
      $('fullscreen').setAttribute('aria-pressed', String(sb.fullscreen));
    });
    // AppRTC's keys: i for the statistics, f for fullscreen (not while typing).
    document.addEventListener('keydown', function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test((e.target || {}).tagName || '')) return;
      if (e.key === 'i') self.toggleInfo();
      if (e.key === 'f') self.toggleFullscreen();
    });
    $('copy-link').onclick = function () {
      var link = P.roomLink || location.href;
      var done = function () { showMessage('Room link copied: ' + link); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(link).then(done, function () { window.prompt('Room link', link); });
      } else {
        window.prompt('Room link', link);
      }
    };
    window.addEventListener('beforeunload', function () { self.hangup(true); });
  };

  // AppRTC's order: leave the room, send bye, close the socket, DELETE the Collider client. The
  // DELETE waits for the socket's close (at most half a second): the server then has the bye,
  // which a DELETE overtaking it on another connection would drop with the client.
  Call.prototype.hangup = function (unloading) {
    if (this.hungUp) return;
    this.hungUp = true;
    var base = this.base();
    var ws = this.ws, room = this.room, client = this.clientId, postBase = this.postBase();
    var bye = JSON.stringify({ type: 'bye' });
    if (client) {
      fetch(base + '/leave/' + room + '/' + client, { method: 'POST', keepalive: true }).catch(function () {});
      // Over the socket once it sent its register (the server applies the register first, even
      // if it is not confirmed yet), else over Collider's HTTP POST.
      if (ws && ws.readyState === WebSocket.OPEN && (this.registered || this.registerTimer)) {
        ws.send(JSON.stringify({ cmd: 'send', msg: bye }));
      } else {
        fetch(postBase + '/' + room + '/' + client, { method: 'POST', body: bye, keepalive: true }).catch(function () {});
      }
    }
    var deleted = false;
    var remove = function () {
      if (deleted || !client) return;
      deleted = true;
      fetch(postBase + '/' + room + '/' + client, { method: 'DELETE', keepalive: true }).catch(function () {});
    };
    if (ws && ws.readyState === WebSocket.OPEN && !unloading) {
      ws.addEventListener('close', remove);
      setTimeout(remove, 500);
      ws.close();
    } else {
      if (ws) ws.close();
      remove();
    }
    if (this.pc) this.pc.close();
    if (this.stream) this.stream.getTracks().forEach(function (t) { t.stop(); });
    $('remote-video').srcObject = null;
    setState('hungup');
    $('controls').innerHTML = '<a href="/r/' + this.room + '">Rejoin the room</a>';
  };

  // ---- test and debugging hooks ----

  // Inbound video frames decoded and the selected candidate pair's types.
  sb.stats = async function () {
    var out = { framesDecoded: 0, local: null, remote: null, bytesReceived: 0 };
    if (!sb.pc) return out;
    var report = await sb.pc.getStats();
    var pair = null;
    report.forEach(function (s) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.framesDecoded += s.framesDecoded || 0;
        out.bytesReceived += s.bytesReceived || 0;
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach(function (s) { if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s; });
    if (pair) {
      var l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
      out.local = l && l.candidateType;
      out.remote = r && r.candidateType;
      out.localAddress = l && (l.address || l.ip) + ':' + l.port;
    }
    return out;
  };

  // Everything above is defined; start.
  if (!P.roomId) {
    landing();
  } else {
    new Call().start();
  }
})();
