// Umbrella for dmoe's DHT layer: Kademlia ids, routing table, storage, wire messages, lookup state, signed records,
// the protocol over UDP, dht::node, dht::node_thread and
// dht::republisher.
#pragma once

#include <dmoe/dht/lookup.hpp>
#include <dmoe/dht/messages.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/peer_bans.hpp>
#include <dmoe/dht/protocol.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/republisher.hpp>
#include <dmoe/dht/routing_table.hpp>
#include <dmoe/dht/storage.hpp>
