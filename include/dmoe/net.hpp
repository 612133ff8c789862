// Umbrella for dmoe's net layer: RPC over TCP, datagram RPC over UDP, their wire formats, fault injection.
#pragma once

#include <dmoe/net/datagram_endpoint.hpp>
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/datagram_reassembler.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_method.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/net/size_text.hpp>
